"""`chatspace serve`: a steered model behind vLLM's own OpenAI-compatible server. vLLM serves
every endpoint it has (chat and completions, streaming, logprobs, chat templates, API keys);
chatspace adds its worker extension (`chatspace.steering.vllm_worker`) and one middleware
(`middleware`) that reads per-request steering, capture and token-metric fields (`fields`) and
answers chatspace's own routes (`state` holds what they need)."""

"""Tiny decoder models built locally (models cannot be downloaded here): a small BPE tokenizer
trained on real text with a Qwen-style chat template (with a thinking section), and random-weight
Qwen2-, Qwen3- and Llama-shaped models saved as ordinary HF model directories. vLLM's CPU
attention needs head_dim in {32, 64, 80, …}: heads of 32."""

from __future__ import annotations

import json
from pathlib import Path

PYDOCS = Path(__file__).resolve().parent.parent / "jobs" / "data" / "pydocs.jsonl"

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
    "{% endif %}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
SHAPES = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
}


def build_tokenizer(out: Path, vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [json.loads(line)["text"] for line in PYDOCS.read_text().splitlines()[:400]]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE)
    fast.save_pretrained(out)
    return fast


def build_model(out: Path, shape: str = "qwen2", layers: int = 4, hidden: int = 64,
                heads: int = 2, kv_heads: int = 1, intermediate: int | None = None,
                seed: int = 0, weight_scale: float = 4.0) -> Path:
    """A random-weight model directory (config, weights, tokenizer) of the given shape."""
    import torch
    import transformers

    config_cls, model_cls = (getattr(transformers, name) for name in SHAPES[shape])
    tokenizer = build_tokenizer(out)
    config = config_cls(vocab_size=len(tokenizer), hidden_size=hidden,
                        intermediate_size=intermediate or hidden * 2, num_hidden_layers=layers,
                        num_attention_heads=heads, num_key_value_heads=kv_heads,
                        head_dim=hidden // heads, max_position_embeddings=512,
                        tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id, torch_dtype="float32")
    torch.manual_seed(seed)
    model = model_cls(config)
    with torch.no_grad():  # larger weights than the init: tokens that differ from step to step
        for param in model.parameters():
            param.mul_(weight_scale if param.ndim > 1 else 1.0)
    model.save_pretrained(out, safe_serialization=True)
    return out

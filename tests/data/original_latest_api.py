"""Calls of the original chatspace's latest API (its README and its release's public
signatures), one engine, each outcome recorded; tests/test_compat.py asserts on them. Run with
the tiny model planted under "Qwen/Qwen3-0.6B" in HF_HOME; prints one JSON line."""

import asyncio
import json
import time

import torch
from safetensors import safe_open
from vllm import SamplingParams

from chatspace.generation import (
    AddSpec,
    ChatResponse,
    LayerSteeringSpec,
    ProjectionCapSpec,
    SteeringSpec,
    VLLMSteerModel,
    VLLMSteeringConfig,
)
from chatspace.steering import shm

PROMPT = "def parse(text):"


async def errors_of(calls: dict) -> dict:
    out = {}
    for name, call in calls.items():
        try:
            await call()
            out[name] = ""
        except Exception as exc:
            out[name] = f"{type(exc).__name__}: {exc}"
    return out


def token_row(model: VLLMSteerModel, token: str) -> torch.Tensor:
    """The output embedding of `token`: added at the last layer, the model emits it."""
    from huggingface_hub import snapshot_download

    path = snapshot_download(model.model_name)
    with safe_open(f"{path}/model.safetensors", framework="pt") as fh:
        weight = fh.get_tensor("lm_head.weight")
    return weight[model.tokenizer.convert_tokens_to_ids(token)].clone()


async def main():
    seen: dict = {}
    cfg = VLLMSteeringConfig("Qwen/Qwen3-0.6B", max_model_len=256)
    model = VLLMSteerModel(cfg, bootstrap_layers=(2,), shm_ttl_seconds=3, shm_max_gb=1.0,
                           decode_buffer_size=64, use_shared_memory=True, shm_threshold_kb=4)
    greedy = SamplingParams(temperature=0.0, max_tokens=6)
    vector = torch.randn(model.hidden_size, generator=torch.Generator().manual_seed(0))
    plain = await model.generate([PROMPT], greedy)

    # 1. spec classes with the original's fields, and the one-layer helpers
    spec = SteeringSpec(layers={4: LayerSteeringSpec(operations=[AddSpec(vector, 60.0)])})
    helper = VLLMSteerModel.simple_steering(4, vector * 3.0, scale=20.0)
    steered = await model.generate([PROMPT], greedy, steering_spec=spec)
    by_helper = await model.generate([PROMPT], greedy, steering_spec=helper)
    capped = await model.generate([PROMPT], greedy, steering_spec=VLLMSteerModel
                                  .simple_projection_cap(4, vector, min=30.0, max=40.0))
    ablated = await model.generate([PROMPT], greedy,
                                   steering_spec=VLLMSteerModel.simple_ablation(4, vector, 0.0))
    readme = SteeringSpec(layers={4: LayerSteeringSpec(
        add=AddSpec(vector, 60.0), projection_cap=ProjectionCapSpec(vector, -1e4, 1e4))})
    await model.apply_steering_spec(readme)
    by_state = await model.generate([PROMPT], greedy)
    await model.clear_all_vectors()
    await model.set_layer_projection_cap(1, vector, 40.0, 50.0)  # the README's state
    by_cap_state = await model.generate([PROMPT], greedy)
    await model.clear_layer_projection_cap(1)
    seen["readme"] = {"capped": by_cap_state, "cleared": await model.generate([PROMPT], greedy)}
    older, older_handles = await model.generate([PROMPT], greedy, capture_hidden_states=True,
                                                layers=[1, 3])
    async with older_handles[0] as handle:
        seen["readme"].update(layers=list(handle.layer_indices),
                              rows=handle.captures[3][0]["hidden"].shape[0])
    seen["specs"] = {"plain": plain, "steered": steered, "helper": by_helper, "capped": capped,
                     "ablated": ablated, "readme_state": by_state,
                     "exported": len(model.export_steering_spec().layers)}

    # 4. capture_layers as an int and as [], handles' request_id, fetch, captures
    texts, handles = await model.generate([PROMPT, "import os"], greedy, capture_layers=2)
    first = handles[0]
    fetched = await first.fetch()
    seen["captures"] = {
        "texts": texts, "layer_indices": list(first.layer_indices),
        "request_ids": [h.request_id for h in handles],
        "same_object": fetched is first.captures is first.captures and
        fetched[2][0]["hidden"] is first.captures[2][0]["hidden"],
        "rows": fetched[2][0]["hidden"].shape[0],
        "prompt_tokens": len(model.tokenizer(PROMPT)["input_ids"])}
    await model.fetch_captures_batch(handles)
    for handle in handles:
        await handle.close()
    empty = await model.generate([PROMPT], greedy, capture_layers=[])
    seen["captures"]["empty"] = [empty[0], [h.captures for h in empty[1]]]

    # 3. constructor arguments: the shared-memory time to live reaches the worker
    _, kept = await model.generate([PROMPT], greedy, capture_layers=[1])  # never read
    name = kept[0]._capture._segment
    before = (shm.SHM_DIR / name).exists()
    time.sleep(5)
    _, later = await model.generate([PROMPT], greedy, capture_layers=[1])  # sweeps
    seen["shm"] = {"before": before, "after_ttl": (shm.SHM_DIR / name).exists()}
    await later[0].close()

    # 5 and 6. what the original refused, and keyword arguments
    seen["refused"] = await errors_of({
        "empty_prompt": lambda: model.generate([""], greedy),
        "max_tokens_0": lambda: model.generate([PROMPT], max_tokens=0),
        "no_messages": lambda: model.chat([], greedy),
        "no_content": lambda: model.chat([[{"role": "user", "content": "a"}],
                                          [{"role": "user"}]], greedy),
        "no_role": lambda: model.chat([{"content": "a"}], greedy),
        "unknown_kwarg": lambda: model.generate([PROMPT], raw_outputs=True),
        "both": lambda: model.generate([PROMPT], greedy, max_tokens=3),
        "unsupported": lambda: model.generate([PROMPT], SamplingParams(stop=["x"]))})
    by_kwargs = await model.generate(PROMPT, temperature=0.0, max_tokens=6, use_tqdm=False)
    raw = (await model.generate([PROMPT], SamplingParams(temperature=0.0, max_tokens=2,
                                                         logprobs=5), raw_output=True))[0]
    out = raw.outputs[0]
    seen["kwargs"] = {"by_kwargs": by_kwargs, "raw_type": type(raw).__name__,
                      "raw_prompt": raw.prompt, "raw_text": out.text,
                      "raw_tokens": list(out.token_ids),
                      "top": [len(step) for step in out.logprobs],
                      "sampled_logprob": out.logprobs[0][out.token_ids[0]].logprob,
                      "plain_text": plain[0]}

    # 7. special tokens: a reply steered onto `</think>` (not EOS), then onto EOS
    think = VLLMSteerModel.simple_steering(model.layer_count - 1,
                                           token_row(model, "</think>"), 1e3)
    stop = VLLMSteerModel.simple_steering(model.layer_count - 1,
                                          token_row(model, "<|im_end|>"), 1e3)
    keep = SamplingParams(temperature=0.0, max_tokens=3, skip_special_tokens=False)
    seen["special"] = {
        "skipped": await model.generate([PROMPT], SamplingParams(temperature=0.0, max_tokens=3),
                                        steering_spec=think),
        "kept": await model.generate([PROMPT], keep, steering_spec=think),
        "eos": await model.generate([PROMPT], greedy, steering_spec=stop),
        "eos_kept": await model.generate([PROMPT], SamplingParams(
            temperature=0.0, max_tokens=6, skip_special_tokens=False), steering_spec=stop)}

    # chat: ChatResponse with its prefill, message boundaries and per-message rows
    conversation = [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "What is a list?"},
                    {"role": "assistant", "content": "A list"}]
    replies, chat_handles = await model.chat(conversation, max_tokens=4, temperature=0.0,
                                             capture_layers=[3],
                                             chat_options={"continue_final_message": True})
    reply, handle = replies[0], chat_handles[0]
    bounds = handle.message_boundaries
    whole = handle.captures[3][0]["hidden"]
    seen["chat"] = {
        "type": type(reply).__name__, "is_response": isinstance(reply, ChatResponse),
        "prefill": reply.prefill, "generated": reply.generated, "str": str(reply),
        "message": reply.to_message(),
        "bounds": [[b.role, b.start_token, b.end_token] for b in bounds],
        "rows": whole.shape[0],
        "message_rows": [handle.get_message_activations(i, 3).shape[0]
                         for i in range(len(bounds))],
        "last_with_generated": handle.get_message_activations(
            len(bounds) - 1, 3, include_generated=True).shape[0],
        "first_equal": bool(torch.equal(handle.get_message_activations(0, 3),
                                        whole[:bounds[0].end_token]))}
    await handle.close()
    plain_chat = await model.chat([{"role": "user", "content": "Hi"}], greedy)
    seen["chat"]["plain"] = [type(plain_chat[0]).__name__, plain_chat[0].prefill,
                             plain_chat[0].has_prefill]
    model.close()
    print("SEEN " + json.dumps(seen))


if __name__ == "__main__":
    asyncio.run(main())

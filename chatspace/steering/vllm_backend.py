"""The vLLM backend: one `AsyncLLM` engine (its own engine-core process) with the
`vllm_worker.SteeringExtension` in its worker. The engine is compiled by default on CUDA (vLLM's
own compilation, CUDA graphs split around the steering op: `vllm_ops`) and eager by default on
the CPU, where compiling is no faster and starts several times slower; either can be forced.

Every request of a `generate` call goes to the engine at once (never a sequential loop), so the
engine batches them. A request that is steered or captured carries its own key, steering
fingerprint and capture layers in ``SamplingParams.extra_args``; specs travel to the worker once
each through `collective_rpc`. A steered request's prompt is salted with its fingerprint
(``cache_salt``) so that it never shares cached prefixes with differently steered or unsteered
requests, and a request capturing prompt rows never reads the prefix cache (a cached prefix
skips the forward pass those rows come from; ``last`` and ``response`` captures read it). When a
request finishes, its captures are collected (requests finishing together share one
`collective_rpc`) into a shared-memory segment that the returned `Capture` maps.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

from chatspace.steering import probes as probing
from chatspace.steering import shm
from chatspace.steering.hf_backend import check_architecture
from chatspace.steering.outputs import Capture, CaptureOptions, Generation, Sampling
from chatspace.steering.spec import SteeringSpec
from chatspace.steering.wire import EXTRA_KEY, CollectAsk, Collected, Hooks, WorkerInfo

log = logging.getLogger(__name__)

SHUTDOWN_SECONDS = 30.0

# What vLLM needs here (set only where the caller has not): a bounded CPU KV cache, no usage
# reports, no hub access, the V1 model runner (the hooks read its batch), a loopback address
# for the engine-core process, and its logs on stderr (stdout carries `--json` output).
ENV_DEFAULTS = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1",
                "HF_HUB_OFFLINE": "1", "VLLM_USE_V2_MODEL_RUNNER": "0",
                "VLLM_HOST_IP": "127.0.0.1", "VLLM_LOGGING_STREAM": "ext://sys.stderr"}
EXTENSION = "chatspace.steering.vllm_worker.SteeringExtension"


def compiles(compile: bool | None) -> bool:
    """Whether an engine asked for with `compile` runs vLLM's compiled model (the default:
    compiled on CUDA, eager elsewhere)."""
    import torch

    return torch.cuda.is_available() if compile is None else compile


def check_v1_runner() -> None:
    """Fail at engine start, in one line, where the hooks could not read the batch: a vLLM
    without the V1 model runner, or the V2 runner asked for (`vllm_worker`'s docstring says
    what they read)."""
    import vllm
    import vllm.envs

    if "VLLM_USE_V2_MODEL_RUNNER" not in vllm.envs.environment_variables:
        raise RuntimeError(f"vLLM {vllm.__version__} has no VLLM_USE_V2_MODEL_RUNNER setting: "
                           "chatspace steers through the V1 model runner, which this vLLM "
                           "does not offer")
    if os.environ["VLLM_USE_V2_MODEL_RUNNER"].strip().lower() not in ("0", "false"):
        raise ValueError(f"VLLM_USE_V2_MODEL_RUNNER="
                         f"{os.environ['VLLM_USE_V2_MODEL_RUNNER']}: chatspace steers through "
                         "the V1 model runner; unset it or set it to 0")


def cpu_thread_binding(ranks: int) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for `ranks` tensor-parallel workers on the CPU: this
    process's CPUs split into that many contiguous groups (``0|1`` for two on two cores)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < ranks:
        raise ValueError(f"tensor_parallel_size {ranks}: needs a CPU per worker on the CPU "
                         f"backend, this process may use {len(cpus)}")
    size = len(cpus) // ranks
    groups = [cpus[i * size:(i + 1) * size] for i in range(ranks)]
    return "|".join(",".join(map(str, group)) for group in groups)


class VLLMBackend:
    def __init__(self, model: str | Path, dtype: str = "float32", compile: bool | None = None,
                 **engine: object):
        for name, value in ENV_DEFAULTS.items():
            os.environ.setdefault(name, value)
        check_v1_runner()
        from transformers import AutoConfig, AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        config = AutoConfig.from_pretrained(str(model))
        check_architecture(config.architectures or [type(config).__name__])
        self.hidden_size = config.hidden_size
        self.num_layers = config.num_hidden_layers
        self.tokenizer = AutoTokenizer.from_pretrained(str(model))
        import torch

        ranks = int(engine.get("tensor_parallel_size") or 1)
        if ranks > 1 and not torch.cuda.is_available():  # the CPU runs TP with bound threads
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_thread_binding(ranks))
        if "enable_chunked_prefill" not in engine and not torch.cuda.is_available():
            # vLLM 0.32's CPU runner cannot rewind a seeded sampler after a partial prefill
            # ("CPU Generator does not use offset"): keep every prompt in one chunk
            engine["enable_chunked_prefill"] = False
        self.compiled = compiles(compile)
        if self.compiled and torch.cuda.is_available() and "compilation_config" not in engine:
            from chatspace.steering.vllm_ops import cuda_compilation

            engine["compilation_config"] = cuda_compilation()
        args = AsyncEngineArgs(model=str(model), dtype=dtype, enforce_eager=not self.compiled,
                               worker_extension_cls=EXTENSION, **engine)
        self.engine: AsyncLLM | None = AsyncLLM.from_engine_args(args)
        self.worker: WorkerInfo | None = None
        self._registered: set[str] = set()
        self._asks: list[tuple[dict, asyncio.Future]] = []
        # a capture segment's time to live and the cap on live segments (None: the
        # CHATSPACE_SHM_TTL and CHATSPACE_MAX_SHM_GB settings, `shm`)
        self.shm_ttl: float | None = None
        self.shm_cap: int | None = None

    async def _rpc(self, method: str, *args: object):
        return (await self.engine.collective_rpc(method, args=args))[0]

    async def install(self) -> WorkerInfo:
        if self.worker is None:
            self.worker = WorkerInfo.from_wire(await self._rpc("chatspace_install"))
            log.info("steering hooks installed in vLLM worker %s (%s)", self.worker.pid,
                     self.worker.runner)
        return self.worker

    async def stats(self, reset: bool = False) -> dict:
        await self.install()
        return await self._rpc("chatspace_stats", reset)

    async def generate(self, token_ids: Sequence[Sequence[int]], samplings: Sequence[Sampling],
                       specs: Sequence[SteeringSpec | None], capture_layers: list[int] | None,
                       options: CaptureOptions, streamer=None,
                       probes: Sequence[Sequence[probing.Probe] | None] | None = None
                       ) -> list[Generation]:
        await self.install()
        fingerprints: dict[int, str] = {}
        for spec in specs:
            if spec is not None and id(spec) not in fingerprints:
                fingerprints[id(spec)] = fingerprint = spec.fingerprint()
                if fingerprint not in self._registered:
                    await self._rpc("chatspace_register", fingerprint, spec.to_wire())
                    self._registered.add(fingerprint)
        probes = probes or [None] * len(token_ids)
        for row in probes:
            if row and id(row) not in fingerprints:
                fingerprints[id(row)] = fingerprint = probing.fingerprint(row)
                if fingerprint not in self._registered:
                    await self._rpc("chatspace_register_probes", fingerprint,
                                    probing.to_wire(row))
                    self._registered.add(fingerprint)
        results = await asyncio.gather(
            *(self._one(list(ids), sampling, fingerprints.get(id(spec)), capture_layers,
                        options, streamer, fingerprints.get(id(row)) if row else None)
              for ids, sampling, spec, row in zip(token_ids, samplings, specs, probes,
                                                  strict=True)),
            return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            for result in results:
                if isinstance(result, Generation) and result.capture is not None:
                    await result.capture.close()
            raise errors[0]
        return results

    async def _one(self, prompt: list[int], sampling: Sampling, fingerprint: str | None,
                   layers: list[int] | None, options: CaptureOptions,
                   streamer=None, probe_set: str | None = None) -> Generation:
        from vllm.inputs import TokensPrompt

        key, metrics_k = uuid.uuid4().hex, sampling.top_k_mass_k
        hooks = Hooks(key, fingerprint, tuple(layers or ()), metrics_k, probe_set)
        hooked = hooks != Hooks(key)
        params = _params(sampling, hooks if hooked else None, streamed=streamer is not None,
                         fresh_prompt=probe_set is not None or
                         (bool(layers) and options.needs_prompt_rows()))
        request = TokensPrompt(prompt_token_ids=prompt)
        if fingerprint is not None:
            request["cache_salt"] = fingerprint
        collected, halted, sent = False, False, 0
        try:
            stream = self.engine.generate(request, params, request_id=key)
            try:
                async for final in stream:
                    output = final.outputs[0]
                    if streamer is not None and len(output.token_ids) > sent:
                        new, sent = list(output.token_ids[sent:]), len(output.token_ids)
                        if streamer(new) is False:
                            halted = True
                            break
            finally:
                await stream.aclose()  # a halted request is aborted in the engine
            token_ids = list(output.token_ids)
            capture = None
            if hooked:
                collected = True
                result = await self._collect(CollectAsk(
                    key=key, total=len(prompt) + len(token_ids) - 1, prompt_len=len(prompt),
                    rows=options.rows, pool=options.pool, dtype=options.dtype,
                    cap=shm.cap_bytes() if self.shm_cap is None else self.shm_cap,
                    ttl=shm.ttl_seconds() if self.shm_ttl is None else self.shm_ttl))
                if result.error is not None:
                    raise RuntimeError(result.error)
                if fingerprint is not None and not result.steered:
                    raise RuntimeError("steering was requested but no decoder-layer hook "
                                       "fired: the model does not run through the hooks")
                if result.segment is not None:
                    capture = Capture(prompt_len=len(prompt), segment=result.segment,
                                      entries=result.entries)
        finally:
            if hooked and not collected:
                await asyncio.shield(self._rpc("chatspace_drop", [key]))
        logprobs = None
        if sampling.logprobs:
            logprobs = [step[token].logprob
                        for step, token in zip(output.logprobs, token_ids, strict=True)]
        metrics = result if metrics_k else Collected()
        values = _probe_values(result.probes) if probe_set is not None else None
        return Generation(prompt_token_ids=prompt, token_ids=token_ids,
                          text=self.tokenizer.decode(token_ids, skip_special_tokens=False),
                          finish_reason="stopped" if halted else output.finish_reason or "length",
                          logprobs=logprobs,
                          capture=capture, entropy=metrics.entropy,
                          top_k_mass=metrics.top_k_mass, probes=values, raw=final)

    async def _collect(self, ask: CollectAsk) -> Collected:
        """One request's collection; requests finishing in the same loop turn share one
        `collective_rpc`."""
        future = asyncio.get_running_loop().create_future()
        self._asks.append((ask, future))
        if len(self._asks) == 1:
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self._flush()))
        return await future

    async def _flush(self) -> None:
        batch, self._asks = self._asks, []
        try:
            results = [Collected.from_wire(r) for r in await self._rpc(
                "chatspace_collect", [ask.to_wire() for ask, _ in batch])]
        except Exception as exc:  # the engine failed: every waiting request fails with it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.cancelled():
                if result.segment is not None:
                    shm.release(result.segment)
                continue
            future.set_result(result)

    def close(self) -> None:
        """Shut the engine down now and drop it, so that it is collected while the interpreter
        still runs (vLLM's `AsyncLLM.__del__` at interpreter exit fails on torn-down
        modules and leaves its shared memory to the resource tracker)."""
        if self.engine is not None:
            engine, self.engine = self.engine, None
            # up to SHUTDOWN_SECONDS for the engine to exit on its own (vLLM's default, 5 s,
            # kills a busy machine's engine, whose shared memory then leaks)
            engine.shutdown(timeout=SHUTDOWN_SECONDS)


def _probe_values(wire: list) -> dict[str, dict[int, list[float]]]:
    """`Collected.probes` as `Generation.probes`: name -> layer -> values."""
    values: dict[str, dict[int, list[float]]] = {}
    for name, layer, row_values in wire:
        values.setdefault(name, {})[layer] = row_values
    return values


def _params(sampling: Sampling, hooks: Hooks | None, streamed: bool = False,
            fresh_prompt: bool = False):
    """vLLM's SamplingParams for one request; `hooks` (its key, spec fingerprint, capture
    layers, metrics k) travel in extra_args, since vLLM renames request ids. A capture that
    keeps prompt rows (`fresh_prompt`) never reads the prefix cache: those rows must be
    computed to be captured (the last prompt row always is). Only a streamed
    request gets an output per step (as `LLM.generate`, the others get their final one: a
    cumulative output per step and request costs the client CPU the engine needs)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        output_kind=RequestOutputKind.CUMULATIVE if streamed else RequestOutputKind.FINAL_ONLY,
        max_tokens=sampling.max_tokens, temperature=sampling.temperature,
        top_p=sampling.top_p, seed=sampling.seed, ignore_eos=sampling.ignore_eos,
        detokenize=False,
        logprobs=sampling.top_logprobs or (0 if sampling.logprobs else None),
        extra_args={EXTRA_KEY: hooks.to_wire()} if hooks else None,
        skip_reading_prefix_cache=True if fresh_prompt else None)

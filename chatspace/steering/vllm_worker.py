"""Runs inside vLLM's worker process, mixed into the worker class through
``worker_extension_cls``: steering and capture of each request differently, at the end of
each decoder layer, in eager and in compiled mode (the ``chatspace::after_layer`` op,
`vllm_ops`).

Before every forward pass a pre-hook on the model reads which requests the batch holds, in
order (``input_batch.req_ids``), where each one's tokens start (``query_start_loc``) and at
which sequence position (``positions``); it finds each request's chatspace key, steering
fingerprint and capture layers in its ``SamplingParams.extra_args`` (vLLM renames request ids
internally, so the key travels there; vectors arrive once per spec through `collective_rpc`).
Rows are never attributed by shape.

The op then steers each steered request's rows (the true post-layer state is
``hidden + residual``; it rewrites those rows of ``hidden`` so that the sum is the steered state)
and keep the rows to capture as a new tensor (the next layer's fused add-norm works in place).
Captured rows are stored with their positions, so a recomputed prefill after preemption
overwrites instead of duplicating, a forward pass past the end is dropped, and rows that never
ran (a prefix-cache read) are reported instead of silently missing. `chatspace_collect`
assembles a finished request's rows straight into a shared-memory segment (`shm`). With
tensor parallelism every rank steers (each holds the whole residual stream after a layer's
all-reduce); only rank 0 keeps capture rows, computes token metrics and writes segments.

What the hooks read from vLLM's V1 model runner (``GPUModelRunner`` and the CPU runner built
on it, forced with ``VLLM_USE_V2_MODEL_RUNNER=0``): ``runner.input_batch.req_ids`` and
``num_reqs`` (the batch's requests in row order), ``runner.query_start_loc.np`` (where each
request's tokens start in the flattened batch), ``runner.requests[req_id].sampling_params``
(the request's ``extra_args``), and the model's ``positions`` argument. Model Runner V2
(``vllm/v1/worker/gpu/``, the default for every model since vLLM 0.29) keeps the same facts
in the ``InputBatch`` it builds for each step (``req_ids``, ``query_start_loc_np``,
``positions``); a request's sampling parameters reach it only when the request is added
(``new_req_data.sampling_params``, handed to its sampler), so the extra_args would have to be
kept there by request id, as ``req_states`` keeps the rest. Supporting it means
reading those; until then an engine without the V1 runner fails at start (`vllm_backend`),
never running unsteered.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace

import torch

from chatspace.steering import probes, shm, vllm_ops
from chatspace.steering.hf_backend import check_architecture
from chatspace.steering.outputs import CaptureOptions, token_metrics
from chatspace.steering.spec import Op, SteeringSpec, apply_ops
from chatspace.steering.wire import EXTRA_KEY, CollectAsk, Collected, Hooks, WorkerInfo

log = logging.getLogger(__name__)

# the worker imports this module (its extension class) before it builds the model: the decoder
# layers it builds then end in the steering op, in eager and in compiled mode
vllm_ops.install()


@dataclass
class _Request:
    key: str
    spec: str | None
    layers: tuple[int, ...]
    # layer -> [(tensor, first row, end row, position of the first row)]
    chunks: dict[int, list[tuple[torch.Tensor, int, int, int]]] = field(default_factory=dict)
    steered: int = 0  # layer calls that steered this request's rows
    metrics_k: int | None = None  # per sampled token: entropy and top-k mass
    metrics: dict[int, tuple[float, float]] = field(default_factory=dict)  # position ->
    probes: str | None = None  # the probe set's fingerprint
    # per pass: (values [rows, every probed layer's k], first row, end row, first position)
    probe_chunks: list[tuple[torch.Tensor, int, int, int]] = field(default_factory=list)


@dataclass
class _Step:
    """What the hooks do in one forward pass."""

    steer: dict[int, list[tuple[slice | torch.Tensor, tuple[Op, ...], list[_Request]]]]
    capture: dict[int, tuple[slice | torch.Tensor, list[tuple[_Request, int, int, int]]]]
    # layer -> [(rows, directions [hidden, k], the probe set's pass)]
    probe: dict[int, list[tuple[slice | torch.Tensor, torch.Tensor, _ProbePass]]]
    requests: int  # in the batch: the rows of the logits, in batch order
    sampled: list[tuple[_Request, int, int]]  # (request, batch index, last position)


@dataclass
class _ProbePass:
    """One probe set's values in one forward pass: each probed layer's ``[rows, k]``, in layer
    order, joined at its last layer into one block that each member request keeps a view of
    (one entry per request and pass, not per layer)."""

    last: int  # the last probed layer
    members: list[tuple[_Request, int, int, int]]  # (request, first, end row, position)
    values: list[torch.Tensor] = field(default_factory=list)

    def add(self, layer: int, values: torch.Tensor) -> None:
        self.values.append(values)
        if layer == self.last:
            block = torch.cat(self.values, dim=1)
            for request, start, end, position in self.members:
                request.probe_chunks.append((block, start, end, position))


def _rows(spans: list[tuple[int, int]]) -> slice | torch.Tensor:
    """Row selector for token spans: a slice when they are contiguous, else an index."""
    if all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False)):
        return slice(spans[0][0], spans[-1][1])
    return torch.cat([torch.arange(a, b) for a, b in spans])


class _WorkerState:
    def __init__(self, runner, primary: bool):
        self.runner = runner
        # tensor parallelism: every rank steers (each computes the whole residual stream),
        # only the first captures, computes token metrics and writes shared memory
        self.primary = primary
        self.specs: dict[str, dict[int, tuple[Op, ...]]] = {}
        # probe set fingerprint -> layer -> (probe names, directions [hidden, k])
        self.probe_sets: dict[str, dict[int, tuple[list[str], torch.Tensor]]] = {}
        self.requests: dict[str, _Request] = {}
        self.by_req_id: dict[str, _Request | None] = {}
        self.step: _Step | None = None
        self.hook_calls = 0
        self.max_batch = 0
        self.ttl = shm.ttl_seconds()
        threading.Thread(target=self._sweeper, name="chatspace-shm-sweep", daemon=True).start()

    def _request(self, req_id: str) -> _Request | None:
        if req_id in self.by_req_id:
            return self.by_req_id[req_id]
        state = self.runner.requests.get(req_id)
        extra = (state.sampling_params.extra_args or {}) if state and state.sampling_params \
            else {}
        hooks = Hooks.from_wire(extra[EXTRA_KEY]) if extra.get(EXTRA_KEY) else None
        request = None
        if hooks:
            request = self.requests.get(hooks.key)
            if request is None:
                request = _Request(hooks.key, hooks.spec, hooks.layers,
                                   metrics_k=hooks.metrics_k, probes=hooks.probes)
                self.requests[hooks.key] = request
        if len(self.by_req_id) > 4 * max(len(self.runner.requests), 64):
            self.by_req_id = {r: q for r, q in self.by_req_id.items()
                              if r in self.runner.requests}
        self.by_req_id[req_id] = request
        return request

    def plan(self, module, args, kwargs) -> None:
        """Forward pre-hook on the model: which rows of this pass belong to which request."""
        self.step = None
        batch = self.runner.input_batch
        count = batch.num_reqs
        if count == 0:
            return
        self.max_batch = max(self.max_batch, count)
        starts = self.runner.query_start_loc.np[:count + 1].tolist()
        positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
        if positions is None or positions.ndim != 1 or positions.shape[0] < starts[-1]:
            return  # not a batch of requests (e.g. a dummy run)
        spans: list[tuple[_Request, int, int]] = []
        indices: list[int] = []
        for index, req_id in enumerate(batch.req_ids[:count]):
            request = self._request(req_id)
            if request is not None:
                spans.append((request, starts[index], starts[index + 1]))
                indices.append(index)
        if not spans:
            return
        first = positions[[start for _, start, _ in spans]].tolist()
        sampled = [(request, index, position + end - start - 1)
                   for (request, start, end), index, position in zip(spans, indices, first,
                                                                    strict=True)
                   if request.metrics_k and self.primary]
        steer: dict = {}
        by_spec: dict[str, list] = {}
        for request, start, end in spans:
            if request.spec is not None and end > start:
                by_spec.setdefault(request.spec, []).append((request, start, end))
        for fingerprint, members in by_spec.items():
            rows = _rows([(s, e) for _, s, e in members])
            for layer, ops in self.specs[fingerprint].items():
                steer.setdefault(layer, []).append((rows, ops, [r for r, _, _ in members]))
        capture: dict = {}
        for (request, start, end), position in zip(spans, first, strict=True):
            for layer in request.layers if self.primary else ():
                capture.setdefault(layer, []).append((request, start, end, position))
        planned = {layer: _kept(members) for layer, members in capture.items()}
        self.step = _Step(steer, planned, self._probe_plan(spans, first), count, sampled)

    def _probe_plan(self, spans: list[tuple[_Request, int, int]], first: list[int]) -> dict:
        """Per layer: each probe set's rows in this pass, its directions and its requests."""
        by_set: dict[str, list[tuple[_Request, int, int, int]]] = {}
        for (request, start, end), position in zip(spans, first, strict=True):
            if request.probes is not None and end > start and self.primary:
                by_set.setdefault(request.probes, []).append((request, start, end, position))
        planned: dict = {}
        for fingerprint, members in by_set.items():
            rows, kept = _kept(members)
            layers = self.probe_sets[fingerprint]
            group = _ProbePass(max(layers), kept)
            for layer, (_, matrix) in layers.items():
                planned.setdefault(layer, []).append((rows, matrix, group))
        return planned

    def after_layer(self, index: int, hidden: torch.Tensor, residual: torch.Tensor) -> None:
        """Called by the ``chatspace::after_layer`` op at the end of decoder layer `index`
        (`vllm_ops`): steer this step's steered rows of `hidden` in place (each group's new
        rows are computed whole before they are written), then keep the rows to capture."""
        self.hook_calls += 1
        step = self.step
        if step is None or (index not in step.steer and index not in step.capture
                            and index not in step.probe):
            return
        for rows, ops, members in step.steer.get(index, ()):
            hidden[rows] = apply_ops(hidden[rows] + residual[rows], ops) - residual[rows]
            for request in members:
                request.steered += 1
        if index in step.capture:
            rows, members = step.capture[index]
            kept = hidden[rows] + residual[rows]  # a new tensor, never a view
            for request, start, end, position in members:
                request.chunks.setdefault(index, []).append((kept, start, end, position))
        for rows, matrix, group in step.probe.get(index, ()):  # after the steering
            group.add(index, probes.read_rows(hidden[rows] + residual[rows], matrix))

    def after_logits(self, module, args, logits: torch.Tensor) -> None:
        """Forward hook on the logits processor: entropy and top-k mass of the distribution
        each metrics request samples from (rows are the batch's requests, in order; a row of a
        prefill chunk that samples nothing lands on a position the collection ignores)."""
        step = self.step
        if step is None or not step.sampled or logits.shape[0] != step.requests:
            return
        by_k: dict[int, list[tuple[_Request, int, int]]] = {}
        for sampled in step.sampled:
            by_k.setdefault(sampled[0].metrics_k, []).append(sampled)
        for k, members in by_k.items():
            rows = torch.tensor([index for _, index, _ in members])
            entropy, mass = token_metrics(logits[rows], k)
            for (request, _, position), e, m in zip(members, entropy, mass, strict=True):
                request.metrics[position] = (e, m)

    def _sweeper(self) -> None:
        """Expire this worker's segments that nobody released, even while the engine idles
        (a client killed before closing its captures)."""
        while True:
            time.sleep(max(min(self.ttl / 2, 30), 0.2))
            shm.sweep(self.ttl)

    def collect(self, ask: CollectAsk) -> Collected:
        """A finished request's steering count and captures (in a shared-memory segment)."""
        request = self.requests.pop(ask.key, None)
        if request is None:
            raise RuntimeError("no decoder-layer hook saw this request: steering and capture "
                               "did not run (is the model running through the hooked layers?)")
        result = Collected(steered=request.steered)
        if not self.primary:
            return result
        total, prompt_len = ask.total, ask.prompt_len
        if request.metrics_k:
            positions = range(prompt_len - 1, total)  # one per generated token
            missing = [p for p in positions if p not in request.metrics]
            if missing:
                raise RuntimeError(f"token metrics missing for positions {missing[:5]}: the "
                                   "logits hook did not see them")
            result = replace(result, entropy=[request.metrics[p][0] for p in positions],
                             top_k_mass=[request.metrics[p][1] for p in positions])
        if request.probes is not None:
            result = replace(result, probes=self._probe_values(request, total))
        if not request.layers:
            return result
        self.ttl = ask.ttl
        shm.sweep(self.ttl)
        options = CaptureOptions(ask.rows, ask.pool, ask.dtype)
        model_dtype = next(iter(request.chunks.values()))[0][0].dtype if request.chunks \
            else torch.float32
        dtype = getattr(torch, options.dtype) if options.dtype else model_dtype
        hidden = self.runner.model_config.get_hidden_size()
        kept = options.kept_rows(total, prompt_len)
        needed = options.needed(total, prompt_len)  # the rows `select` reads
        entries, size = shm.layout({layer: (kept, hidden) for layer in request.layers}, dtype)
        name, out = shm.create(entries, size, ask.cap)
        try:
            for layer in request.layers:
                direct = kept == total and options.pool == "none" and dtype == model_dtype
                full = out[layer] if direct else torch.empty(total, hidden, dtype=model_dtype)
                seen = torch.zeros(total, dtype=torch.bool)
                for tensor, start, end, position in request.chunks.get(layer, ()):
                    count = min(end - start, total - position)
                    if count > 0:
                        full[position:position + count] = tensor[start:start + count]
                        seen[position:position + count] = True
                if not seen[needed.start:needed.stop].all():
                    missing = [needed.start + p for p in (~seen[needed.start:needed.stop])
                               .nonzero().flatten()[:5].tolist()]
                    raise RuntimeError(f"capture of layer {layer}: rows at positions {missing} "
                                       "never ran through the model")
                if not direct:
                    out[layer].copy_(options.select(full, prompt_len))
        except BaseException:
            shm.release(name)
            raise
        return replace(result, segment=name, entries=entries)

    def _probe_values(self, request: _Request, total: int) -> list[tuple[str, int, list[float]]]:
        """Each probe's value on each of the request's `total` rows, at each of its layers."""
        layers = self.probe_sets[request.probes]  # in layer order, as a pass's block columns
        columns = [(name, layer) for layer, (names, _) in layers.items() for name in names]
        values = torch.full((total, len(columns)), float("nan"))
        seen = torch.zeros(total, dtype=torch.bool)
        for chunk, start, end, position in request.probe_chunks:
            count = min(end - start, total - position)
            if count > 0:
                values[position:position + count] = chunk[start:start + count].cpu()
                seen[position:position + count] = True
        if not seen.all():
            missing = (~seen).nonzero().flatten()[:5].tolist()
            raise RuntimeError(f"probes: rows at positions {missing} never ran through the "
                               "model")
        return [(name, layer, column) for (name, layer), column in
                zip(columns, values.T.tolist(), strict=True)]


def _kept(members: list[tuple[_Request, int, int, int]]) -> tuple:
    """The rows of `members`' spans in this pass, and where each member's rows sit in the
    tensor those rows make."""
    kept, offset = [], 0
    for request, start, end, position in members:
        kept.append((request, offset, offset + end - start, position))
        offset += end - start
    return _rows([(s, e) for _, s, e, _ in members]), kept


class SteeringExtension:
    """Methods vLLM mixes into its worker; the client calls them with `collective_rpc`."""

    def chatspace_install(self) -> dict:
        """Install the hooks (once); a `WorkerInfo`."""
        runner = self.model_runner
        model = runner.get_model()
        architecture = type(model).__name__
        check_architecture([architecture])
        if not hasattr(runner, "input_batch") or not hasattr(runner, "query_start_loc"):
            raise ValueError(f"model runner {type(runner).__module__} is not supported "
                             "(set VLLM_USE_V2_MODEL_RUNNER=0)")
        if getattr(self, "_chatspace", None) is None:
            from vllm.distributed import get_tensor_model_parallel_rank

            self._chatspace = _WorkerState(runner, get_tensor_model_parallel_rank() == 0)
            # outside the compiled region (vLLM compiles the decoder, `model.model`)
            model.register_forward_pre_hook(self._chatspace.plan, with_kwargs=True)
            model.logits_processor.register_forward_hook(self._chatspace.after_logits)
            vllm_ops.attach(self._chatspace)
            shm.sweep()
        return WorkerInfo(architecture=architecture, pid=os.getpid(),
                          num_layers=len(model.model.layers),
                          runner=f"{type(runner).__module__}.{type(runner).__name__}",
                          compiled=not runner.model_config.enforce_eager,
                          captures=self._chatspace.primary).to_wire()

    def chatspace_register(self, fingerprint: str, wire: list[dict]) -> None:
        spec = SteeringSpec.from_wire(wire)
        self._chatspace.specs[fingerprint] = {index: layer.ops
                                              for index, layer in spec.layers.items()}

    def chatspace_register_probes(self, fingerprint: str, wire: list[dict]) -> None:
        device = getattr(self.model_runner, "device", "cpu")  # read there on every pass
        self._chatspace.probe_sets[fingerprint] = {
            layer: (names, matrix.to(device))
            for layer, (names, matrix) in probes.by_layer(probes.from_wire(wire)).items()}

    def chatspace_collect(self, asks: list[dict]) -> list[dict]:
        """`CollectAsk`s in, `Collected`s out."""
        results = []
        for ask in asks:
            try:
                results.append(self._chatspace.collect(CollectAsk.from_wire(ask)))
            except RuntimeError as exc:
                results.append(Collected(error=str(exc)))
        return [r.to_wire() for r in results]

    def chatspace_drop(self, keys: list[str]) -> None:
        for key in keys:
            self._chatspace.requests.pop(key, None)

    def chatspace_stats(self, reset: bool = False) -> dict:
        state = self._chatspace
        from torch._dynamo.utils import counters

        stats = {"hook_calls": state.hook_calls, "max_batch": state.max_batch,
                 "pending": len(state.requests), "specs": len(state.specs),
                 "graphs_compiled": counters["stats"]["unique_graphs"]}  # by dynamo, ever
        if reset:
            state.max_batch = 0
        return stats

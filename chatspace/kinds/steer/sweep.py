"""What one steer task does with its parts: load the model once, send each part's rows to the
engine all at once (each row with its own steering point, persona, sampling seed), and turn
the generations into a results table, a capture index and one safetensors file of captures.

Row r of the plan is (point, prompt, persona, rep) in that order of nesting, so any slicing
of the rows gives the same generations: every row carries its own seed.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from chatspace.kinds.steer.metrics import THINK_END, generation_metrics, thinking_split
from chatspace.kinds.steer.points import point_file, point_layers
from chatspace.kinds.steer.probes import PROBES_FILE, PROBES_SCHEMA, load_probes, probe_rows
from chatspace.kinds.steer.prompts import system_prompt
from chatspace.kinds.steer.rendering import row_ids
from chatspace.kinds.steer.schema import CAPTURE_INDEX_SCHEMA, RESULTS_SCHEMA
from chatspace.runs.files import read_json
from chatspace.runs.kind import Part, PartOutput
from chatspace.runs.record import Run
from chatspace.runs.timing import StageTimer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepRow:
    """One row of a part, decoded: its steering point, prompt, persona and repetition, the
    system prompt it gets and the rendered prompt's token ids."""

    row: int
    point: int
    prompt: int
    persona: dict[str, Any] | None
    rep: int
    system: str | None
    token_ids: list[int]


def row_seed(seed: int, row: int) -> int:
    """Row `row`'s sampling seed, from the spec's seed alone (not the slicing)."""
    digest = hashlib.sha256(f"chatspace-steer:{seed}:{row}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def decode_row(row: int, prompts: int, personas: int, reps: int) -> tuple[int, int, int, int]:
    """(point, prompt, persona, rep) of plan row `row`."""
    row, rep = divmod(row, reps)
    row, persona = divmod(row, personas)
    point, prompt = divmod(row, prompts)
    return point, prompt, persona, rep


class SweepParts:
    def __init__(self, run: Run, task: int, timer: StageTimer):
        from chatspace.steering.model import SteerModel
        from chatspace.steering.spec import SteeringSpec
        from chatspace.steering.vllm_backend import compiles

        self.run, self.task, self.timer, self.spec = run, task, timer, run.spec
        inputs = read_json(run.dir / "inputs.json")
        self.prompts, self.personas = inputs["prompts"], inputs["personas"]
        self.points = inputs["points"]
        self.template = run.plan.details.get("template", "chat")  # runs planned before: chat
        self.steering = [SteeringSpec.load(run.dir / point_file(n)) if p["op"] else None
                         for n, p in enumerate(self.points)]
        self.probes = load_probes(run.dir / PROBES_FILE) if self.spec.probes else None
        model = self.spec.model
        engine: dict[str, Any] = {}
        if model.backend == "vllm":
            engine = {"seed": self.spec.generation.seed, "max_model_len": model.max_model_len,
                      "tensor_parallel_size": model.tensor_parallel_size,
                      "max_num_seqs": model.max_num_seqs, "compile": model.compile}
            engine = {k: v for k, v in engine.items() if v is not None}
            if compiles(model.compile):
                # the compiled model's artifacts, under the root that every task of the run
                # shares: the run compiles once, not once per task (unless the user chose)
                os.environ.setdefault("VLLM_CACHE_ROOT", str(run.root / "cache" / "vllm"))
        else:
            engine = {"device": model.device, "batch_size": model.batch_size}
        with timer.measure("model_load"):
            path = run.path(run.plan.details["model"]["path"])
            self.model = SteerModel(str(path), backend=model.backend, dtype=model.dtype,
                                    **engine)
        self.think_end = self.model.tokenizer.convert_tokens_to_ids(THINK_END)
        if self.think_end == self.model.tokenizer.unk_token_id:
            self.think_end = None

    def __call__(self, parts: list[Part]) -> Iterator[PartOutput]:
        try:
            for part in parts:
                yield self._part(part)
        finally:
            with self.timer.measure("model_close"):
                self.model.close()

    def _part(self, part: Part) -> PartOutput:
        from chatspace.steering.outputs import CaptureOptions, Sampling

        spec, gen = self.spec, self.spec.generation
        rows = []
        for row in range(part.start, part.stop):
            point, prompt, persona, rep = decode_row(row, len(self.prompts),
                                                     max(len(self.personas), 1), gen.n_reps)
            who = self.personas[persona] if self.personas else None
            system = None if self.template == "raw" else \
                system_prompt(who, spec.personas.system_prompt_style)
            name = who["persona"] if who and spec.personas.renames_role else None
            rows.append(SweepRow(row, point, prompt, who, rep, system,
                                 row_ids(self.model.tokenizer, self.template,
                                         self.prompts[prompt], system, gen.thinking, name)))
        samplings = [Sampling(max_tokens=gen.max_tokens, temperature=gen.temperature,
                              top_p=gen.top_p, seed=row_seed(gen.seed, r.row),
                              top_k_mass_k=spec.metrics.top_k_mass_k
                              if spec.metrics.token_metrics else None) for r in rows]
        capture = spec.capture
        with self.timer.measure("generate"):
            outs = self.model.generate_sync(
                [r.token_ids for r in rows], samplings,
                steering_spec=[self.steering[r.point] for r in rows],
                capture_layers=capture.layers or None,
                capture=CaptureOptions(capture.rows, capture.pool, capture.dtype),
                probes=self.probes)
        with self.timer.measure("results"):
            results = self._results(rows, outs, samplings)
            index, files = self._captures(part, results.column("id").to_pylist(), outs)
        tokens = sum(len(o.token_ids) for o in outs)
        tables = {"results": results}
        if capture.layers:
            tables["capture_index"] = index
        if self.probes:
            tables["probes"] = self._probes(rows, outs, results)
        log.info("task %d: part %d generated %d tokens for %d rows", self.task, part.number,
                 tokens, len(rows))
        return PartOutput(part, tables, {"generated_tokens": tokens}, files)

    def _results(self, rows: list[SweepRow], outs, samplings) -> pa.Table:
        plan, records = self.run.plan, []
        for r, out, sampling in zip(rows, outs, samplings, strict=True):
            meta, who = self.points[r.point], r.persona
            records.append({
                "id": f"{self.run.run_id}:{r.row}", "row": r.row, "point": meta["name"],
                "op": meta["op"], "layers": point_layers(meta),
                "scale": meta["scale"], "persona": who["persona"] if who else None,
                "category": who.get("category") if who else None, "prompt_index": r.prompt,
                "rep": r.rep, "prompt": self._prompt_text(r.prompt), "system_prompt": r.system,
                "output_text": out.text, "output_token_ids": out.token_ids,
                "prompt_tokens": len(r.token_ids),
                "output_tokens": len(out.token_ids), "finish_reason": out.finish_reason,
                **generation_metrics(out.token_ids, out.entropy, out.top_k_mass,
                                     self.think_end, self.spec.generation.thinking is not False),
                "seed": sampling.seed, "run_id": self.run.run_id,
                "created_at": plan.created_at})
        return pa.Table.from_pylist(records, schema=RESULTS_SCHEMA)

    def _probes(self, rows: list[SweepRow], outs, results: pa.Table) -> pa.Table:
        thinking = self.spec.generation.thinking is not False
        records = []
        for r, out, result in zip(rows, outs, results.to_pylist(), strict=True):
            _, split = thinking_split(out.token_ids, self.think_end, thinking)
            keys = ("id", "row", "point", "persona", "category", "run_id", "created_at")
            records += probe_rows(out.probes, len(r.token_ids), split,
                                  {k: result[k] for k in keys})
        return pa.Table.from_pylist(records, schema=PROBES_SCHEMA)

    def _prompt_text(self, number: int) -> str:
        prompt = self.prompts[number]
        return prompt if isinstance(prompt, str) else "\n".join(
            f"{m['role']}: {m['content']}" for m in prompt)

    def _captures(self, part: Part, ids: list[str], outs) -> tuple[pa.Table, dict[str, bytes]]:
        if not self.spec.capture.layers:
            return pa.Table.from_pylist([], schema=CAPTURE_INDEX_SCHEMA), {}
        from safetensors.torch import save

        tensors, index = {}, []
        name = self.run.part_file_path(self.task, part.number, "captures").name
        for row_id, out in zip(ids, outs, strict=True):
            for layer, tensor in out.capture.layers.items():
                key = f"{row_id}/layer{layer}"
                tensors[key] = tensor.contiguous()
                index.append({"id": row_id, "file": name, "key": key, "layer": layer,
                              "shape": list(tensor.shape),
                              "dtype": str(tensor.dtype).removeprefix("torch.")})
            self.model.run(out.capture.close())
        return (pa.Table.from_pylist(index, schema=CAPTURE_INDEX_SCHEMA),
                {"captures": save(tensors, metadata={"run_id": self.run.run_id})})

"""The judge kind: LLM-as-judge scores for the generations of finished steer runs, on the run
machinery. The plan reads the steer runs' results, keeps what `--where` keeps, renders each
generation into the rubric's messages and counts their tokens (the dry run's estimate); each
task judges its slice part by part — through the OpenAI API (`openai_judge`) or a model on its
node (`local_judge`) — and writes ``judgments-{i:05d}.parquet``; the reduce checks that every
planned generation was judged once and sums tokens, cost and verdicts into the manifest."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from chatspace.kinds.judge.spec import JudgeSpec
from chatspace.names import check_name
from chatspace.runs.formats import Completion, Plan
from chatspace.runs.kind import Kind, Part, PartOutput, Summary, TaskCheck, WorkPlan
from chatspace.runs.record import Run
from chatspace.runs.run_files import RunFiles
from chatspace.runs.timing import StageTimer


class JudgeKind(Kind):
    """Judge the generations of finished steer runs (--from RUN, repeatable; --where SQL keeps
    some) by a rubric (--rubric FILE.toml: messages over the results columns, an answer
    format) with a judge model: the OpenAI API or a compatible endpoint (a dry run with exact
    tokens and cost unless --execute), or --judge-backend local. Outputs one judgment per
    generation (score, label, verdict, raw reply, tokens, cost); query views `judgments` and
    `judged`; `submit vectors --judged-by RUN --where "score >= 3"` uses them."""

    name = "judge"
    spec_type = JudgeSpec
    task_views = {"judgments": "judgments"}
    # each generation with its latest judgment (of the newest judge run that judged it)
    derived_views = {"judged": (("steer_results", "judgments"), """
        SELECT r.*, j.score, j.label, j.verdict, j.judge_model, j.run_id AS judge_run_id
        FROM steer_results r JOIN (
            SELECT * FROM judgments QUALIFY row_number() OVER (
                PARTITION BY steer_run_id, id ORDER BY created_at DESC, run_id DESC) = 1) j
        ON r.run_id = j.steer_run_id AND r.id = j.id""")}

    def plan(self, spec: JudgeSpec, root: Path, run_id: str) -> WorkPlan:
        from chatspace.kinds.judge.estimate import input_tokens, judge_model, output_tokens
        from chatspace.kinds.judge.rubric import load_rubric
        from chatspace.kinds.judge.sources import (
            COLUMNS,
            ROWS_FILE,
            judge_rows,
            open_steer_run,
            results_of,
            rows_bytes,
        )
        from chatspace.kinds.predicates import kept

        rubric = load_rubric(spec.rubric.file, set(COLUMNS))
        runs = [open_steer_run(ref, root) for ref in spec.source.runs]
        rows = judge_rows(kept(results_of(runs), spec.source.where), rubric)
        if rows.num_rows == 0:
            raise_empty(spec)
        model = judge_model(spec, root)
        details: dict[str, Any] = {
            "model": model, "rubric": {"file": str(spec.rubric.file), **rubric.to_dict()},
            "sources": [r.run_id for r in runs], "rows": rows.num_rows,
            "max_tokens": rubric.max_tokens}
        if model["backend"] == "openai":
            counts = [input_tokens(json.loads(m), model["encoding"])
                      for m in rows.column("messages").to_pylist()]
            rows = rows.append_column("input_tokens", pa.array(counts, pa.int64()))
            details.update(input_tokens=sum(counts),
                           output_tokens=output_tokens(rubric, model["encoding"]))
        label = check_name(model["label"].replace("/", "__"), "judge.model (--judge-model)")
        out = root / "judgments" / label / (spec.run.name or "judge") / run_id
        return WorkPlan(rows=rows.num_rows, details=details, output_dir=out,
                        manifest_path=out / "manifest.json",
                        outputs={"judgments": "judgments-{task:05d}.parquet"},
                        files={ROWS_FILE: rows_bytes(rows)})

    def estimate(self, spec: JudgeSpec, plan: WorkPlan, execute: bool) -> list[str]:
        if plan.details["model"]["backend"] != "openai":
            return []
        from chatspace.kinds.judge.estimate import estimate_lines

        return estimate_lines(spec, plan.details, execute)

    def run_parts(self, run: Run, task: int, parts: list[Part],
                  timer: StageTimer) -> Iterator[PartOutput]:
        from chatspace.kinds.judge.judging import judged_parts

        return judged_parts(run, task, parts, timer)

    def write_options(self, output: str) -> dict[str, Any]:
        from chatspace.kinds.judge.schema import WRITE_OPTIONS

        return WRITE_OPTIONS

    def task_stats(self, run: Run, task: int, parts: list[dict[str, Any]]) -> dict[str, Any]:
        keys = ("requests", "retries", "tokens", "output_tokens", "cost_usd")
        out = {key: sum(p.get(key, 0) for p in parts) for key in keys}
        verdicts: dict[str, int] = {}
        for part in parts:
            for verdict, count in part["verdicts"].items():
                verdicts[verdict] = verdicts.get(verdict, 0) + count
        return {**out, "verdicts": verdicts}

    def check_task(self, run: Run, task: int, record: Completion) -> TaskCheck:
        from chatspace.kinds.judge.sources import ROWS_FILE

        table = pq.read_table(run.output_paths(task)["judgments"],
                              columns=["steer_run_id", "id"])
        start, stop = run.task_bounds(task)
        planned = pq.read_table(run.dir / ROWS_FILE, columns=["steer_run_id", "id"]) \
            .slice(start, stop - start)
        problems = [] if table.equals(planned) else \
            [f"judgments of task {task} are not its planned generations, in order"]
        keys = pa.array([f"{r}:{i}" for r, i in zip(table.column("steer_run_id").to_pylist(),
                                                  table.column("id").to_pylist(),
                                                  strict=True)], pa.string())
        return TaskCheck(problems, keys)

    def summarize(self, run: Run, records: list[Completion]) -> Summary:
        totals = self.task_stats(run, -1, [r.details for r in records])
        scores: dict[str, int] = {}
        for record in records:
            column = pq.read_table(run.output_paths(record.task)["judgments"],
                                   columns=["score"]).column("score").to_pylist()
            for score in column:
                key = "null" if score is None else str(score)
                scores[key] = scores.get(key, 0) + 1
        return Summary({"judge_model": run.plan.details["model"]["label"],
                        "backend": run.plan.details["model"]["backend"],
                        "sources": run.plan.details["sources"],
                        "rubric": run.plan.details["rubric"], "judged": run.rows,
                        "scores": dict(sorted(scores.items())), **totals},
                       totals={"tokens": totals["tokens"], "cost_usd": totals["cost_usd"]})

    def report_blocks(self, runs: list[RunFiles]) -> list[str]:
        from chatspace.kinds.judge.report import judge_blocks

        return judge_blocks(runs)

    def run_facts(self, plan: Plan, records: list[Completion]) -> dict[str, Any]:
        tokens = sum(r.details.get("tokens", 0) for r in records)
        cost = sum(r.details.get("cost_usd", 0.0) for r in records)
        return {"model": plan.details["model"]["label"],
                "backend": plan.details["model"]["backend"],
                "tokens": tokens or None, "cost_usd": cost or None}


def raise_empty(spec: JudgeSpec) -> None:
    from chatspace.errors import BadInput

    where = f" --where {spec.source.where!r} keeps none of them" if spec.source.where else ""
    raise BadInput(f"source.runs: nothing to judge: the runs have no generations{where}")

"""One judge task: its parts' rows judged by the plan's judge (OpenAI or local), each judgment
journaled as it arrives (rows already in the journal are not judged again), each part's
judgments a table in plan order."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from chatspace.kinds.judge.rubric import Rubric
from chatspace.kinds.judge.schema import JUDGMENTS_SCHEMA, VERDICTS, Journal
from chatspace.kinds.judge.sources import read_rows
from chatspace.runs.kind import Part, PartOutput
from chatspace.runs.record import Run
from chatspace.runs.timing import StageTimer


def judged_parts(run: Run, task: int, parts: list[Part],
                 timer: StageTimer) -> Iterator[PartOutput]:
    details = run.plan.details
    rubric = Rubric.from_dict(details["rubric"])
    journal = Journal(run.parts_dir(task))
    read: dict[int, list[dict[str, Any]]] = {}  # each part's rows, read once

    def rows_of(part: Part) -> tuple[int, list[dict[str, Any]]]:
        read[part.start] = read_rows(run, part.start, part.stop)
        return part.start, read[part.start]

    chunks = (rows_of(part) for part in parts)
    try:
        if details["model"]["backend"] == "openai":
            from chatspace.kinds.judge.openai_judge import judge_parts

            judged = judge_parts(run, rubric, journal, chunks)
        else:
            judged = _local_parts(details["model"], rubric, journal, chunks)
        for part in parts:
            with timer.measure("judge"):
                stats = next(judged)
            yield _output(run, part, read.pop(part.start), journal, stats)
    finally:
        journal.close()


def _local_parts(model: dict[str, Any], rubric: Rubric, journal: Journal,
                 chunks: Iterator[tuple[int, list[dict[str, Any]]]]) -> Iterator[dict]:
    from chatspace.kinds.judge.local_judge import judge_rows, local_model

    loaded = None
    try:
        for start, rows in chunks:
            todo = [i for i in range(len(rows)) if start + i not in journal.done]
            if todo:
                loaded = loaded or local_model(model)
                for i, judged in zip(todo, judge_rows(loaded, rubric, [rows[i] for i in todo]),
                                     strict=True):
                    journal.add(start + i, judged)
            yield {}
    finally:  # also when the task stops taking parts after the last one (the generator closes)
        if loaded is not None:
            loaded.close()


def _output(run: Run, part: Part, rows: list[dict[str, Any]], journal: Journal,
            stats: dict[str, Any]) -> PartOutput:
    model = run.plan.details["model"]
    judged = [journal.done[part.start + i] for i in range(len(rows))]
    table = pa.Table.from_pylist([
        {"id": row["id"], "steer_run_id": row["steer_run_id"], **j,
         "judge_model": model["label"], "backend": model["backend"], "run_id": run.run_id,
         "created_at": run.plan.created_at} for row, j in zip(rows, judged, strict=True)],
        JUDGMENTS_SCHEMA)
    verdicts = {v: sum(j["verdict"] == v for j in judged) for v in VERDICTS}
    return PartOutput(part, {"judgments": table},
                      {**stats, "cost_usd": sum(j["cost_usd"] for j in judged),
                       "verdicts": {k: n for k, n in verdicts.items() if n}})

"""The judge kind's blocks of `chatspace report`: the verdicts, then the score distribution per
group of the judged generations (persona, and the steering point), read from the judgments and
the steer results they judged."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from chatspace.results import svg
from chatspace.results.html import Block, chart, note, table

if TYPE_CHECKING:
    from chatspace.runs.run_files import RunFiles

GROUPS = ("persona", "point")


def judge_blocks(runs: list[RunFiles]) -> list[Block]:
    blocks: list[Block] = []
    for files in runs:
        paths = files.files("judgments")
        if not paths:
            blocks.append(note("no task done yet: no judgments to show"))
            continue
        judged = pa.concat_tables(pq.read_table(p) for p in paths).to_pylist()
        verdicts: dict[str, int] = {}
        for j in judged:
            verdicts[j["verdict"]] = verdicts.get(j["verdict"], 0) + 1
        blocks.append(table(["verdict", "generations"], sorted(map(list, verdicts.items()))))
        steer = _judged_results(files, judged)
        low, high = (files.run.plan.details["rubric"][k] for k in ("low", "high"))
        scores = [str(s) for s in range(low, high + 1)]
        for column in GROUPS:
            counts: dict[str, list[float]] = {}
            for j in judged:
                group = steer.get((j["steer_run_id"], j["id"]), {}).get(column)
                if j["score"] is not None:
                    row = counts.setdefault("null" if group is None else str(group),
                                            [0.0] * len(scores))
                    row[j["score"] - low] += 1
            blocks.append(chart(svg.bar_chart(f"scores by {column}", scores, counts,
                                              "generations"), "no scored generation"))
    return blocks


def _judged_results(files: RunFiles, judged: list[dict]) -> dict[tuple[str, str], dict]:
    """The judged generations' group columns, by (steer run, id), from their results files."""
    from chatspace.kinds.judge.sources import open_steer_run

    wanted = {j["steer_run_id"] for j in judged}
    out: dict[tuple[str, str], dict] = {}
    for run_id in sorted(wanted):
        try:
            run = open_steer_run(run_id, files.run.root)
        except Exception:  # noqa: BLE001 - a steer run gone since: its groups are unknown
            continue
        for task in range(run.num_tasks):
            for row in pq.read_table(run.output_paths(task)["results"],
                                     columns=["id", *GROUPS]).to_pylist():
                out[(run_id, row["id"])] = row
    return out

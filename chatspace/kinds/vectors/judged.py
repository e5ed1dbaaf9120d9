"""Which generations a vectors run reads when it is told to (``--judged-by``, ``--where``,
``--min-count``): those whose judgment (of a finished judge run) and results columns satisfy
the predicate, in groups of at least the minimum count; the others are left out and the
groups under the minimum are listed."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from chatspace.kinds.judge.kind import JudgeKind
from chatspace.kinds.judge.sources import results_of
from chatspace.kinds.predicates import kept
from chatspace.runs.record import Run, open_finished

JUDGED = ["steer_run_id", "id", "score", "label", "verdict", "judge_model"]


def open_judge_run(ref: str, root: Path) -> Run:
    """A finished judge run; BadInput naming it when it is not one."""
    return open_finished(ref, root, JudgeKind(), "source.judged_by (--judged-by)",
                         ", not a judge run")


def kept_ids(runs: list[Run], judged_by: str | None, where: str | None,
             root: Path) -> set[tuple[str, str]] | None:
    """(steer run id, generation id) of the generations to read; None: every one."""
    if judged_by is None and where is None:
        return None
    table = results_of(runs)
    table = table.drop_columns([n for n in table.column_names
                                if pa.types.is_list(table.schema.field(n).type)])
    if judged_by is not None:
        judge = open_judge_run(judged_by, root)
        judgments = pa.concat_tables(
            pq.read_table(judge.output_paths(t)["judgments"], columns=JUDGED)
            for t in range(judge.num_tasks)).rename_columns(["run_id", *JUDGED[1:]])
        table = table.join(judgments, keys=["run_id", "id"], join_type="inner")
    table = kept(table, where)
    return set(zip(table.column("run_id").to_pylist(), table.column("id").to_pylist(),
                   strict=True))


def small_groups(groups: list[str | None], minimum: int) -> dict[str | None, int]:
    """The groups with fewer than `minimum` generations, with their counts."""
    counts: dict[str | None, int] = {}
    for group in groups:
        counts[group] = counts.get(group, 0) + 1
    return {g: n for g, n in counts.items() if n < minimum}

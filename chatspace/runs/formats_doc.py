"""docs/formats.md, generated from the record types (`python -m chatspace.runs.formats_doc >
docs/formats.md`): every record file, who writes it, when it is complete, its fields, and how
names inside outputs are built."""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any

from chatspace.runs.formats import (
    RECORDS,
    TAGGED_FILES,
    FileEntry,
    LogFile,
    ManifestFile,
    PartTime,
    RecordedFile,
    Submission,
    TaskSlice,
)


def formats_markdown() -> str:
    """docs/formats.md: every record file, who writes it, when it is complete, its fields."""
    lines = ["# Record formats", "",
             "Generated from `chatspace/runs/formats.py` (`python -m chatspace.runs.formats_doc "
             "> docs/formats.md`); a test keeps the two equal.", "",
             "Every record is JSON, written atomically (a dot-named temp file, fsync, rename). "
             "Each carries `format` and `version`; a record without them is version 1 (written "
             "before versions) and reads the same. A kind's own fields sit flat beside "
             "the machinery's (`details` below). Paths are relative to the root.", ""]
    for cls in RECORDS:
        lines += [f"## `{cls.PATH}` — {cls.FORMAT}, version {cls.VERSION}", "",
                  " ".join((cls.__doc__ or "").split()), "", f"Written by: {cls.WRITER}.", ""]
        lines += _field_table(cls)
    lines += ["## Objects inside records", ""]
    for item in (FileEntry, ManifestFile, TaskSlice, PartTime, LogFile, Submission,
                 RecordedFile):
        lines += [f"### {item.__name__}", ""] + _field_table(item)
    lines += ["## Files with a format in their metadata", "",
              "Safetensors and Parquet files carry `format` and `version` as text (safetensors' "
              "header metadata, Parquet's schema metadata).", "",
              "| file | format | version | what |", "|---|---|---|---|"]
    lines += [f"| `{t.path}` | {t.format} | {t.version} | {t.what} |" for t in TAGGED_FILES]
    lines += [""]
    lines += ["## Other files of a run", "", "| file | what | written |", "|---|---|---|"]
    lines += [f"| `{path}` | {what} | {when} |" for path, what, when in OTHER_FILES]
    lines += ["", "## Names inside outputs", "", *NAMES]
    return "\n".join(lines) + "\n"


NAMES = (
    "- A steer point's label (the results' `point`, the manifest's `per_point` keys): "
    "`{name}/L{layer}/x{scale}` for add and ablate, `{name}/L{layer}` for a cap, `{name}` for a "
    "baseline; the scale is the shortest text that reads back as the same float (`x1`, `x0.5`, "
    "`x1.0000001`). Labels are unique in a run: a plan that would give two points one label is "
    "refused.",
    "- A steer manifest's `per_category` is a list of objects, one per category (`category` "
    "null: the generations whose persona has none, a group of its own).",
    "- A vector's key (`vectors.safetensors`, `vectors.parquet`): `mean/{group}/L{layer}`, "
    "`contrast/{A}-{B}/L{layer}`, `pc{k}/L{layer}`, where each group's name is escaped: `%` "
    "`/` `-` `~` as `%25` `%2F` `%2D` `%7E`, and the null group (rows with no value) as `~`. "
    "No two groups or pairs give one key; a key that would repeat fails the reduce.",
    "- Records are strict JSON: a number that is not finite (NaN, infinity) is written null.",
)


OTHER_FILES = (
    ("runs/{run_id}/spec.json", "the resolved spec (as in plan.json)", "before plan.json"),
    ("runs/{run_id}/{name}.npy, other files", "what the kind's plan saved (the embed "
     "sample, the steer inputs)", "before plan.json"),
    ("runs/{run_id}/parts/task-NNNNN/part-NNNNN.{output}.parquet", "a committed part's rows",
     "before its sidecar; joined into the task's output, then removed"),
    ("runs/{run_id}/leases/task-NNNNN.lock", "a POSIX lock held by the process running the "
     "task (never stale: the kernel releases it)", "when the task starts"),
    ("runs/{run_id}/logs/", "executor logs (submitit's, `local-NNNNN.log`)", "as tasks run"),
    ("{output_dir}/…", "the kind's outputs (README, Outputs): listed with bytes and "
     "sha256 in completion records and the manifest", "by tasks and the reduce"),
    ("cache/vllm/…", "vLLM's cache (the compiled model) of compiled steer tasks, shared by "
     "every task (when VLLM_CACHE_ROOT is not set); safe to delete", "by the first task"),
)


def _field_table(cls: type) -> list[str]:
    hints = typing.get_type_hints(cls)
    rows = ["| field | type | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(cls):
        rows.append(f"| `{f.name}` | `{_type_name(hints[f.name])}` | "
                    f"{f.metadata.get('doc', '')} |")
    return [*rows, ""]


def _type_name(hint: Any) -> str:
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return re.sub(r"(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_])", "", str(hint))


if __name__ == "__main__":
    import sys

    sys.stdout.write(formats_markdown())

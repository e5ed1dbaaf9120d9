"""The judge kind's output: one judgment per judged generation (README "Judging generations"),
and the journal a task keeps of the judgments it has received, so that a killed task never
asks again for a row it was answered."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa

JUDGMENTS_SCHEMA = pa.schema([
    ("id", pa.string()),  # the judged generation's id in its steer run
    ("steer_run_id", pa.string()),
    ("score", pa.int32()),  # null unless verdict is scored
    ("label", pa.string()),  # the rubric's label of the score, if it has one
    ("verdict", pa.string()),  # scored | unparsed | refused (content filter) | rejected (400)
    ("raw_reply", pa.string()),  # the judge's last reply, as it came
    ("judge_model", pa.string()),
    ("backend", pa.string()),
    ("prompt_tokens", pa.int32()),
    ("completion_tokens", pa.int32()),
    ("cost_usd", pa.float64()),
    ("finish_reason", pa.string()),
    ("attempts", pa.int32()),  # asks of this row (2: the reply broke the format once)
    ("run_id", pa.string()),
    ("created_at", pa.string()),  # the run's plan time: reruns write the same bytes
])
VERDICTS = ("scored", "unparsed", "refused", "rejected")
WRITE_OPTIONS = {"compression": "zstd",
                 "use_dictionary": ["steer_run_id", "label", "verdict", "judge_model",
                                    "backend", "finish_reason", "run_id", "created_at"]}
JOURNAL = "part-journal.jsonl"  # in the task's parts folder, removed with it


class Journal:
    """The judgments a task has received, one JSON line each (keyed by plan row), appended as
    they arrive; a torn last line (a kill mid-write) is a row not judged."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / JOURNAL
        self.done: dict[int, dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    self.done[int(entry.pop("_row"))] = entry
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue
        self.out = open(self.path, "a")  # noqa: SIM115 - closed by close()

    def add(self, row: int, judgment: dict[str, Any]) -> None:
        self.done[row] = judgment
        self.out.write(json.dumps({"_row": row, **judgment}) + "\n")
        self.out.flush()
        os.fsync(self.out.fileno())

    def close(self) -> None:
        self.out.close()

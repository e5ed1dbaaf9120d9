"""The ``[dataset]`` and ``[sampling]`` spec tables, shared by every job type that reads rows
from a dataset, and their validation."""

from __future__ import annotations

from dataclasses import dataclass

from chatspace.errors import BadInput
from chatspace.names import check_name

EXTRACT_MODES = ("first-assistant", "conversation")


@dataclass(frozen=True)
class DatasetConfig:
    name: str = ""
    subset: str | None = None
    split: str | None = None
    text_field: str | None = None
    messages_field: str | None = None
    extract: str = "first-assistant"
    id_field: str | None = None

    def validate(self) -> None:
        if not self.name:
            raise BadInput("dataset.name is required (--dataset NAME_OR_PATH)")
        if (self.text_field is None) == (self.messages_field is None):
            raise BadInput("give exactly one of dataset.text_field (--text-field) and "
                           "dataset.messages_field (--messages-field)")
        if self.extract not in EXTRACT_MODES:
            raise BadInput(f"dataset.extract must be one of {', '.join(EXTRACT_MODES)}, "
                           f"got {self.extract!r}")
        check_split(self.subset, self.split)


def check_split(subset: str | None, split: str | None) -> None:
    """A subset and split go into output paths: each must be a plain directory name."""
    if subset is not None:
        check_name(subset, "dataset.subset (--subset)")
    if split is not None:
        check_name(split, "dataset.split (--split)")


@dataclass(frozen=True)
class SamplingConfig:
    seed: int = 0
    n: int | None = None
    p: float | None = None
    max_rows: int | None = None

    def validate(self) -> None:
        if self.seed < 0:
            raise BadInput(f"sampling.seed (--seed) must be >= 0, got {self.seed}")
        if self.n is not None and self.p is not None:
            raise BadInput("give at most one of sampling.n (--n) and sampling.p (--p); "
                           "neither takes every row (--max-rows caps it)")
        if self.n is not None and self.n < 1:
            raise BadInput(f"sampling.n must be >= 1, got {self.n}")
        if self.p is not None and not 0 < self.p <= 1:
            raise BadInput(f"sampling.p must be in (0, 1], got {self.p}")
        if self.max_rows is not None and self.max_rows < 1:
            raise BadInput(f"sampling.max_rows must be >= 1, got {self.max_rows}")

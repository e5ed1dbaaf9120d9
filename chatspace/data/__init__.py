"""Data sources shared by kinds: files and cached HF datasets, deterministic sampling,
text extraction from rows, and recording a dataset under the workspace root."""

"""The serve kind: a steered model behind vLLM's OpenAI-compatible server, as one task."""

from chatspace.kinds.serve.kind import ServeKind

__all__ = ["ServeKind"]

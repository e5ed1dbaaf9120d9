"""The judge kind: LLM-as-judge scores for the generations of finished steer runs."""

from chatspace.kinds.judge.kind import JudgeKind

__all__ = ["JudgeKind"]

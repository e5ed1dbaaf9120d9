"""Per-generation metrics of the persona experiments: mean token entropy and mean top-k
probability mass over the generated tokens, each also split at the end of the thinking section
into thinking and output parts, and the position where thinking ends.

Thinking is the generated tokens up to and including the first ``</think>``; output is the
rest. Without a ``</think>``, the whole generation is thinking when the thinking mode is on
(it was cut off) and output when it is off. A part with no tokens has no mean (None).
"""

from __future__ import annotations

from collections.abc import Sequence

THINK_END = "</think>"


def mean_of(values: Sequence[float]) -> float | None:
    """The mean, None for no values (a part with no tokens)."""
    return sum(values) / len(values) if values else None


def thinking_split(token_ids: Sequence[int], think_end_id: int | None,
                   thinking: bool) -> tuple[int | None, int]:
    """The position of the first ``</think>`` (None without one) and how many generated
    tokens are thinking."""
    end = token_ids.index(think_end_id) if think_end_id in token_ids else None
    return end, end + 1 if end is not None else (len(token_ids) if thinking else 0)


def generation_metrics(token_ids: Sequence[int], entropy: Sequence[float] | None,
                       top_k_mass: Sequence[float] | None, think_end_id: int | None,
                       thinking: bool) -> dict[str, float | int | None]:
    """The row's metrics; the means are None without per-token values (metrics off)."""
    end, split = thinking_split(token_ids, think_end_id, thinking)
    if entropy is None or top_k_mass is None:
        return {"think_end_position": end, **dict.fromkeys(
            [f"avg_{name}{part}" for name in ("entropy", "top_k_mass")
             for part in ("", "_thinking", "_output")])}
    return {
        "think_end_position": end,
        "avg_entropy": mean_of(entropy),
        "avg_entropy_thinking": mean_of(entropy[:split]),
        "avg_entropy_output": mean_of(entropy[split:]),
        "avg_top_k_mass": mean_of(top_k_mass),
        "avg_top_k_mass_thinking": mean_of(top_k_mass[:split]),
        "avg_top_k_mass_output": mean_of(top_k_mass[split:]),
    }

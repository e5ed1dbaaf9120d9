"""Busy/idle timing of pipeline stages, recorded in completion records and the manifest."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class StageTimer:
    """Accumulates seconds per stage and kind ("busy" working, "idle" waiting on a queue)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds: dict[str, dict[str, float]] = {}
        self._start = time.perf_counter()

    @contextmanager
    def measure(self, stage: str, kind: str = "busy") -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            with self._lock:
                stage_times = self._seconds.setdefault(stage, {"busy": 0.0, "idle": 0.0})
                stage_times[kind] += elapsed

    def summary(self) -> dict[str, dict[str, float]]:
        with self._lock:
            out = {s: {k: round(v, 3) for k, v in t.items()} for s, t in self._seconds.items()}
        out["wall"] = {"seconds": round(time.perf_counter() - self._start, 3)}
        return out


def add_timings(total: dict[str, dict[str, float]], more: dict[str, dict[str, float]]) -> None:
    """Sum `more` into `total`, stage by stage."""
    for stage, kinds in more.items():
        into = total.setdefault(stage, {})
        for kind, seconds in kinds.items():
            into[kind] = round(into.get(kind, 0.0) + seconds, 3)

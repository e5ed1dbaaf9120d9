"""Threads for overlapping pipeline stages on bounded queues: a stage that fails records its
exception and stops the others, and the caller re-raises it."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

DONE = object()  # end-of-stream marker on a stage queue


class Stage(threading.Thread):
    """A pipeline thread that records its exception and stops the other stages."""

    def __init__(self, name: str, body: Callable[[], None], stop: threading.Event):
        super().__init__(name=name, daemon=True)
        self.body, self.stop, self.error = body, stop, None

    def run(self) -> None:
        try:
            self.body()
        except BaseException as exc:  # re-raised on the task's thread
            self.error = exc
            self.stop.set()


def put(q: queue.Queue, item: Any, stop: threading.Event) -> None:
    """Put `item`, giving up once `stop` is set."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.2)
            return
        except queue.Full:
            continue


def get(q: queue.Queue, stop: threading.Event) -> Any:
    """The next item, or DONE once `stop` is set."""
    while not stop.is_set():
        try:
            return q.get(timeout=0.2)
        except queue.Empty:
            continue
    return DONE

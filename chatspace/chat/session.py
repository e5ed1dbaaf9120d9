"""A chat's state: the history, the settings a researcher changes as they go, and the steering
in force; the prompt of the next turn is rendered exactly as a steer sweep renders its rows
(`chatspace.kinds.steer.prompts`: "You are a/an NAME." and the renamed assistant role)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chatspace.kinds.steer.prompts import messages, system_prompt
from chatspace.kinds.vector_refs import default_steering
from chatspace.runs.files import atomic_path, default_root
from chatspace.steering.model import SteerModel
from chatspace.steering.outputs import Sampling
from chatspace.steering.spec import SteeringSpec


@dataclass
class Steering:
    """The steering in force: a spec and where it came from."""

    spec: SteeringSpec
    source: str

    @property
    def scale(self) -> float | None:
        """The scale of the first add or ablate op (what `/scale` sets on all of them)."""
        return next((op.scale for layer in self.spec.layers.values() for op in layer.ops
                     if hasattr(op, "scale")), None)

    def describe(self) -> str:
        ops = ", ".join(f"layer {i}: {'+'.join(op.op for op in layer.ops)}"
                        for i, layer in sorted(self.spec.layers.items()))
        scale = "" if self.scale is None else f", scale {self.scale:g}"
        return f"steering from {self.source} ({ops}{scale})"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "scale": self.scale,
                "fingerprint": self.spec.fingerprint()}


def steering_from(path: str, layer: int | None, scale: float | None, op: str,
                  hidden_size: int, num_layers: int, key: str | None = None,
                  root: Path | None = None) -> Steering:
    """The steering in force from a spec file or one vector (`default_steering`)."""
    return Steering(*default_steering(path, layer, scale, op, hidden_size, num_layers, key,
                                      root or default_root()))


@dataclass
class Settings:
    persona: str | None = None
    system: str | None = None  # set by /system; otherwise the persona's
    thinking: bool | None = None
    max_tokens: int = 256
    temperature: float = 0.7
    seed: int = 0
    capture_layers: list[int] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.persona or "assistant"

    def system_prompt(self) -> str | None:
        if self.system is not None:
            return self.system
        return system_prompt({"persona": self.persona}, "you-are-a") if self.persona else None


@dataclass
class ChatSession:
    model: SteerModel
    settings: Settings
    steering: Steering | None = None
    history: list[dict[str, str]] = field(default_factory=list)
    turns: list[dict[str, Any]] = field(default_factory=list)  # what /save writes

    def conversation(self, message: str) -> list[dict[str, str]]:
        """The messages of the next turn: system prompt, history, the new message."""
        return messages([*self.history, {"role": "user", "content": message}],
                        self.settings.system_prompt())

    def prompt_ids(self, message: str) -> list[int]:
        return self.model.render(self.conversation(message), self.settings.thinking,
                                 self.settings.persona)

    def sampling(self) -> Sampling:
        return Sampling(max_tokens=self.settings.max_tokens,
                        temperature=self.settings.temperature,
                        seed=self.settings.seed + len(self.turns))

    def record(self, message: str, reply: str, thinking: str, finish_reason: str,
               captured: dict[str, Any] | None = None) -> None:
        """Keep a finished (or stopped) turn in the history and in what /save writes."""
        self.turns.append({"messages": [*self.history, {"role": "user", "content": message}],
                           "reply": reply, "thinking": thinking,
                           "finish_reason": finish_reason,
                           "captured": captured or {},
                           "settings": {**asdict(self.settings),
                                        "system_prompt": self.settings.system_prompt(),
                                        "steering": self.steering.to_dict()
                                        if self.steering else None}})
        self.history += [{"role": "user", "content": message},
                         {"role": "assistant", "content": reply}]

    def clear(self) -> None:
        self.history = []

    def save(self, path: Path) -> int:
        """Every turn as one JSON line: `messages` (the conversation up to the user's
        message, without the system prompt, as `submit steer` reads a prompt), the reply and
        every setting. Returns the number of lines."""
        with atomic_path(path) as tmp:
            tmp.write_text("".join(json.dumps(t, ensure_ascii=False) + "\n"
                                   for t in self.turns))
        return len(self.turns)

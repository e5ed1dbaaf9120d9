"""Turn a dataset row into the text to embed: a plain text column, or a chat `messages` column
(list of ``{role, content}``) reduced to its first assistant turn or the whole conversation.

Rows with nothing to embed are not dropped silently: `extract` returns the reason, which the
task counts and the manifest reports under ``rows_skipped``.
"""

from __future__ import annotations

from typing import Any

from chatspace.data.config import DatasetConfig


def _render_conversation(messages: list[dict[str, Any]]) -> str:
    return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in messages)


def extract(value: Any, cfg: DatasetConfig) -> tuple[str | None, str | None]:
    """Return ``(text, None)`` or ``(None, skip_reason)`` for one row's field value."""
    if cfg.messages_field is not None:
        if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
            return None, "messages-not-a-list"
        if cfg.extract == "first-assistant":
            value = next((m.get("content") for m in value if m.get("role") == "assistant"), None)
            if value is None:
                return None, "no-assistant-turn"
        else:
            value = _render_conversation(value) if value else ""
    if not isinstance(value, str):
        return None, "non-string" if value is not None else "null"
    if not value.strip():
        return None, "empty"
    return value, None

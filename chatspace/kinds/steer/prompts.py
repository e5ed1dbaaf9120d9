"""A steer run's prompts and personas, read once when the run is planned (and stored in the run
directory, so tasks never depend on the original files), and the chat messages of one row.

Prompts are a JSON list of strings or of chat-message lists (``[{"role", "content"}]``), a
JSONL file of them (or of ``{"messages": …}`` objects, as `chatspace chat` saves a
conversation), or a dataset column sampled like embed rows. Personas are a JSON list of
``{"persona", "category", "article"}``; the ``you-are-a`` style gives the system prompt "You
are a pirate." (and "You are an assistant." without personas), ``none`` gives no system
prompt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chatspace.data.config import SamplingConfig
from chatspace.errors import BadInput
from chatspace.kinds.steer.spec import PersonasConfig, PromptsConfig
from chatspace.text import is_text

Prompt = str | list[dict[str, str]]


def _read_json_list(path: str, what: str) -> list[Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BadInput(f"{what} file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"{what} file {path} is not JSON: {exc}") from None
    if not isinstance(data, list) or not data:
        raise BadInput(f"{what} file {path} must hold a non-empty JSON list")
    return data


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str)
        and isinstance(m.get("content"), str) for m in value)


def _read_jsonl(path: str) -> list[Any]:
    """A JSONL prompts file: one prompt per line, or one object with `messages` per line (as
    `chatspace chat`'s /save writes them; its other keys are kept for people, not read)."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise BadInput(f"prompts file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise BadInput(f"prompts file {path} is not UTF-8 text ({exc})") from None
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadInput(f"prompts file {path}: line {number} is not JSON: {exc}") from None
        prompts.append(entry["messages"] if isinstance(entry, dict) and "messages" in entry
                       else entry)
    if not prompts:
        raise BadInput(f"prompts file {path} holds no prompts")
    return prompts


def _encodable(value: Any) -> bool:
    """Whether every string in `value` (a prompt, a persona entry) is valid Unicode text: a
    lone surrogate (JSON's ``"\\ud800"``) fails every tokenizer."""
    if isinstance(value, str):
        return is_text(value)
    if isinstance(value, dict):
        return all(_encodable(v) for v in value.values())
    return all(_encodable(v) for v in value) if isinstance(value, list) else True


def _check_encodable(values: list[Any], where: str) -> None:
    for number, value in enumerate(values):
        if not _encodable(value):
            raise BadInput(f"{where}: entry {number} holds a lone surrogate (an unpaired "
                           "\\ud800-\\udfff escape), which is not text any tokenizer encodes")


def load_prompts(cfg: PromptsConfig) -> list[Prompt]:
    prompts = _load_prompts(cfg)
    _check_encodable(prompts, f"prompts {cfg.file or cfg.dataset}")
    return prompts


def _load_prompts(cfg: PromptsConfig) -> list[Prompt]:
    if cfg.file is not None:
        prompts = _read_jsonl(cfg.file) if cfg.file.endswith(".jsonl") else \
            _read_json_list(cfg.file, "prompts")
        for number, prompt in enumerate(prompts):
            if not (isinstance(prompt, str) and prompt) and not _is_messages(prompt):
                raise BadInput(f"prompts file {cfg.file}: entry {number} is neither a non-empty "
                               "string nor a list of {role, content} messages")
        return prompts
    from chatspace.data.sampling import draw_sample
    from chatspace.data.sources import RowReader, open_source

    source = open_source(cfg.dataset, cfg.subset, cfg.split)
    column = cfg.text_field or cfg.messages_field
    if column not in source.columns:
        raise BadInput(f"prompts field {column!r} is not a column of {cfg.dataset} (columns: "
                       f"{', '.join(source.columns)})")
    sample = draw_sample(SamplingConfig(seed=cfg.seed, n=cfg.n, p=cfg.p), source.rows)
    values, ids = RowReader(source).read(sample, [column])
    prompts = []
    for value, row_id in zip(values[column], ids, strict=True):
        if not (isinstance(value, str) and value.strip()) and not _is_messages(value):
            raise BadInput(f"prompts from {cfg.dataset}: row {row_id} has no usable {column}")
        prompts.append(value)
    return prompts


def load_personas(cfg: PersonasConfig) -> list[dict[str, str]]:
    """The personas (an empty list without a personas file)."""
    if cfg.file is None:
        return []
    personas = _read_json_list(cfg.file, "personas")
    for number, entry in enumerate(personas):
        if not isinstance(entry, dict) or not isinstance(entry.get("persona"), str) \
                or not entry["persona"].strip():
            raise BadInput(f"personas file {cfg.file}: entry {number} has no 'persona'")
        for key in ("category", "article"):
            if key in entry and not isinstance(entry[key], str):
                raise BadInput(f"personas file {cfg.file}: entry {number}.{key} must be a "
                               "string")
    _check_encodable(personas, f"personas file {cfg.file}")
    return personas


def article(persona: dict[str, str]) -> str:
    """The persona's article: as given (an empty one means none: "You are Hamlet."), else
    "a" or "an" by the persona's first letter."""
    if "article" in persona:
        return persona["article"].strip()
    return "an" if persona["persona"][:1].lower() in "aeiou" else "a"


def system_prompt(persona: dict[str, str] | None, style: str) -> str | None:
    if style == "none":
        return None
    if persona is None:
        return "You are an assistant."
    return " ".join(["You are", *filter(None, [article(persona)]), f"{persona['persona']}."])


def messages(prompt: Prompt, system: str | None) -> list[dict[str, str]]:
    """The chat of one row: the system prompt (if any) before the prompt's messages."""
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system is not None:
        turns = [{"role": "system", "content": system},
                 *[t for t in turns if t["role"] != "system"]]
    return turns

"""How a steer run's rows become token ids, the same way when the run is planned and in its
tasks, and the checks made when it is planned so that no task fails at rendering: the prompt
template (``chat`` needs the tokenizer's chat template; ``raw`` is the text as it is, for base
models), personas that cannot add turns, and prompts that fit the model's context."""

from __future__ import annotations

from typing import Any

from chatspace.errors import BadInput
from chatspace.kinds.steer.prompts import Prompt, messages, system_prompt
from chatspace.kinds.steer.spec import SteerSpec
from chatspace.steering.templates import chat_text, raw_ids, special_tokens


def prompt_template(spec: SteerSpec, tokenizer: Any) -> str:
    """The run's template: the spec's ``prompts.template``, else ``chat`` when the tokenizer
    has a chat template; BadInput naming the option when neither applies."""
    chosen = spec.prompts.template
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chosen == "chat" or (chosen is None and has_template):
        if not has_template:
            raise BadInput(f"prompts.template (--prompts-template) is chat, but model "
                           f"{spec.model.name}'s tokenizer has no chat template: use raw")
        return "chat"
    if chosen is None:
        raise BadInput(f"model {spec.model.name}'s tokenizer has no chat template (a base "
                       "model?): set prompts.template (--prompts-template) to raw to send "
                       "each prompt's text as it is")
    return "raw"


def row_ids(tokenizer: Any, template: str, prompt: Prompt, system: str | None,
            thinking: bool | None, assistant_name: str | None) -> list[int]:
    """The token ids of one row's prompt."""
    if template == "raw":
        return raw_ids(tokenizer, prompt)  # plan refuses message lists and personas
    text = chat_text(tokenizer, messages(prompt, system), thinking, assistant_name)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def check_rows(spec: SteerSpec, tokenizer: Any, template: str, prompts: list[Prompt],
               personas: list[dict[str, str]], context: int | None) -> None:
    """BadInput (one line) unless every row renders and fits `context` positions with room
    for one new token. Each prompt is rendered with the persona whose system prompt is
    longest, the row of that prompt with the most tokens."""
    if template == "raw":
        if personas:
            raise BadInput("prompts.template raw takes no personas: a persona needs the chat "
                           "template's system prompt and roles")
        for number, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise BadInput(f"prompts: entry {number} is a list of chat messages, which "
                               "prompts.template raw cannot send (use plain strings)")
    specials = special_tokens(tokenizer)
    for number, persona in enumerate(personas):
        name = persona["persona"]
        if any(c in name for c in "\n\r\u2028\u2029\x85"):
            raise BadInput(f"personas: entry {number} ({name[:40]!r}) holds a line break")
        found = next((t for t in specials for text in persona.values() if t in text), None)
        if found is not None:
            raise BadInput(f"personas: entry {number} ({name[:40]!r}) holds the tokenizer's "
                           f"special token {found!r}, which would add turns")
    style, gen = spec.personas.system_prompt_style, spec.generation
    longest = max(personas, key=lambda p: len(system_prompt(p, style) or "") + len(
        p["persona"])) if personas else None
    system = None if template == "raw" else system_prompt(longest, style)
    name = longest["persona"] if longest and spec.personas.renames_role else None
    for number, prompt in enumerate(prompts):
        try:
            count = len(row_ids(tokenizer, template, prompt, system, gen.thinking, name))
        except ValueError as exc:
            raise BadInput(f"prompts: entry {number} does not render: {exc}") from None
        if context is not None and count >= context:
            raise BadInput(f"prompts: entry {number} is {count} tokens once rendered; the "
                           f"model's context is {context} positions (model.max_model_len)")

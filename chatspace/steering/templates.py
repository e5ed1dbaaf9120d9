"""Prompts into token ids: chat messages through the tokenizer's chat template, or raw text.

The persona sweeps rename the assistant role to the persona. The rename goes through the
template's own output: the generation header the template appends (``<|im_start|>assistant``),
and the header of each earlier assistant turn where the template renders a conversation turn
by turn. Text inside a message is never rewritten, even when it holds the same header.
"""

from __future__ import annotations

from typing import Any

ROLE = "assistant"


def _renderer(tokenizer: Any, enable_thinking: bool | None):
    extra: dict[str, Any] = {}
    if enable_thinking is not None:
        extra["enable_thinking"] = enable_thinking

    def template(msgs: list[dict[str, str]], generation: bool) -> str:
        return tokenizer.apply_chat_template(msgs, tokenize=False,
                                             add_generation_prompt=generation, **extra)
    return template


def chat_text(tokenizer: Any, messages: list[dict[str, str]],
              enable_thinking: bool | None = None, assistant_name: str | None = None) -> str:
    """`messages` through the chat template, ending with the generation prompt; with
    `assistant_name`, the assistant role renamed to it (see the module's docstring)."""
    template = _renderer(tokenizer, enable_thinking)
    text = template(messages, True)
    if not assistant_name:
        return text
    probe = [{"role": "user", "content": "?"}]
    opening = template(probe, True)[len(template(probe, False)):]  # <|im_start|>assistant\n
    if ROLE not in opening:
        raise ValueError("the chat template names no assistant role to rename")
    header = opening[:opening.index(ROLE) + len(ROLE)]
    renamed = header[:-len(ROLE)] + assistant_name
    body = template(messages, False)
    if not text.startswith(body) or header not in text[len(body):]:
        raise ValueError("the chat template appends no assistant header to rename")
    generation = text[len(body):].replace(header, renamed, 1)
    return _renamed_turns(template, messages, header, renamed, body) + generation


def _renamed_turns(template, messages: list[dict[str, str]], header: str, renamed: str,
                   body: str) -> str:
    """`body` (the conversation, rendered) with each assistant turn's own header renamed, when
    the template renders the conversation as its turns one after another; `body` as it is
    otherwise (then only the generation header is renamed)."""
    out, previous = [], ""
    for number, message in enumerate(messages):
        try:
            prefix = template(messages[:number + 1], False)
        except Exception:  # noqa: BLE001 - a template may refuse a partial conversation
            return body
        if not prefix.startswith(previous):
            return body
        piece = prefix[len(previous):]
        if message.get("role") == ROLE and piece.startswith(header):
            piece = renamed + piece[len(header):]
        out.append(piece)
        previous = prefix
    return "".join(out) + body[len(previous):] if body.startswith(previous) else body


def special_tokens(tokenizer: Any) -> list[str]:
    """The tokenizer's special tokens as text (``<|im_start|>``, ``<|endoftext|>``, …)."""
    added = [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values()
             if getattr(t, "special", False)]
    return sorted({*tokenizer.all_special_tokens, *added} - {""}, key=len, reverse=True)


def raw_ids(tokenizer: Any, text: str) -> list[int]:
    """A raw prompt's token ids: the text as it is, with the tokenizer's own special tokens
    around it (a base model's BOS), as vLLM's text prompts get them."""
    return tokenizer(text)["input_ids"]

"""The original chatspace's chat surface: messages checked, rendered with the chat template,
a reply that knows its prefill, and each message's token span in the rendered prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Conversation = list[dict[str, Any]]


class ChatResponse(str):
    """One chat reply: ``prefill`` (the assistant message continued with
    ``continue_final_message``, else "") and ``generated``. It is the text itself too (a
    `str` of ``prefill + generated``), so code written for replies as strings keeps working."""

    prefill: str
    generated: str

    def __new__(cls, prefill: str = "", generated: str = "") -> ChatResponse:
        response = super().__new__(cls, prefill + generated)
        response.prefill, response.generated = prefill, generated
        return response

    def full_text(self) -> str:
        return self.prefill + self.generated

    @property
    def has_prefill(self) -> bool:
        return bool(self.prefill)

    def to_message(self, role: str = "assistant") -> dict[str, str]:
        """The reply as an OpenAI-style message, for the next turn's history."""
        return {"role": role, "content": self.full_text()}

    def __repr__(self) -> str:
        return f"ChatResponse(prefill={self.prefill!r}, generated={self.generated!r})"


@dataclass
class MessageBoundary:
    """Where one message's tokens lie in the rendered prompt: ``[start_token, end_token)``."""

    role: str
    content: str
    start_token: int
    end_token: int

    @property
    def num_tokens(self) -> int:
        return self.end_token - self.start_token


def conversations(messages: Any) -> list[Conversation]:
    """One conversation (a list of messages) or a list of them, checked: ValueError naming
    the first bad one."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages: give a conversation (a non-empty list of messages) or a "
                         "list of them")
    single = isinstance(messages[0], dict)
    batch = [messages] if single else messages
    for number, conversation in enumerate(batch):
        where = "messages" if single else f"messages[{number}]"
        if not isinstance(conversation, list) or not conversation:
            raise ValueError(f"{where}: a conversation must be a non-empty list of messages")
        for index, message in enumerate(conversation):
            if not isinstance(message, dict):
                raise ValueError(f"{where}[{index}]: a message is a dict with 'role' and "
                                 f"'content', got {type(message).__name__}")
            for key in ("role", "content"):
                if not isinstance(message.get(key), str):
                    raise ValueError(f"{where}[{index}]: has no {key!r} string")
    return batch


def template_options(chat_options: dict[str, Any] | None) -> dict[str, Any]:
    """`apply_chat_template` keywords: the generation prompt unless the final message is
    continued (vLLM's chat defaults), then the caller's `chat_options`."""
    options = dict(chat_options or {})
    options.setdefault("add_generation_prompt", not options.get("continue_final_message"))
    return options


def render(tokenizer: Any, conversation: Conversation,
           options: dict[str, Any]) -> tuple[str, list[int]]:
    """A conversation through the chat template, and its token ids (the template writes any
    BOS itself)."""
    text = tokenizer.apply_chat_template(conversation, tokenize=False, **options)
    return text, tokenizer(text, add_special_tokens=False)["input_ids"]


def prefill_of(conversation: Conversation, options: dict[str, Any]) -> str:
    last = conversation[-1]
    continued = options.get("continue_final_message") and last["role"] == "assistant"
    return last["content"] if continued else ""


def compute_message_boundaries(messages: Conversation, tokenizer: Any,
                               chat_kwargs: dict[str, Any]) -> tuple[MessageBoundary, ...]:
    """Each message's token span: message ``i`` ends where the conversation up to it ends when
    rendered alone (without a generation prompt; the last message with `chat_kwargs`)."""
    boundaries, start = [], 0
    for index, message in enumerate(messages):
        last = index == len(messages) - 1
        options = dict(chat_kwargs) if last else {
            **{k: v for k, v in chat_kwargs.items() if k != "continue_final_message"},
            "add_generation_prompt": False}
        end = len(render(tokenizer, messages[:index + 1], options)[1])
        boundaries.append(MessageBoundary(message["role"], message["content"], start, end))
        start = end
    return tuple(boundaries)

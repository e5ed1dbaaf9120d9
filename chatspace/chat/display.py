"""Printing a reply while its tokens arrive: the thinking section (up to ``</think>``) set apart
and dimmed, then the answer under the persona's label."""

from __future__ import annotations

from typing import TextIO

from chatspace.text import CONTROL, one_line

THINK_START, THINK_END = "<think>", "</think>"
DIM, BOLD, RESET = "\x1b[2m", "\x1b[1m", "\x1b[0m"


def think_ids(tokenizer) -> tuple[int | None, int | None]:
    """The ids of <think> and </think> when the tokenizer has them as single tokens."""
    vocab = tokenizer.get_vocab()
    return vocab.get(THINK_START), vocab.get(THINK_END)


class ReplyPrinter:
    """Feed it token ids as they come; it prints only what is new since the last feed
    (a partial UTF-8 character waits for its next token)."""

    def __init__(self, tokenizer, label: str, thinking: bool, out: TextIO, styled: bool):
        self.tokenizer, self.out, self.styled = tokenizer, out, styled
        self.label = label = one_line(label)
        self.start_id, self.end_id = think_ids(tokenizer)
        self.in_thinking = thinking and self.end_id is not None
        self.thinking: list[int] = []
        self.answer: list[int] = []
        self.shown = {"thinking": "", "answer": ""}
        self._style(DIM if self.in_thinking else BOLD)
        self.out.write(f"{label} (thinking) │ " if self.in_thinking else f"{label}> ")
        self._style(DIM if self.in_thinking else RESET)
        self.out.flush()

    def _style(self, code: str) -> None:
        if self.styled:
            self.out.write(code)

    def _decode(self, ids: list[int]) -> str:
        ids = [i for i in ids if i not in (self.start_id, self.end_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _show(self, part: str, ids: list[int]) -> None:
        text = self._decode(ids).rstrip("\ufffd")
        self.out.write(text[len(self.shown[part]):].translate(CONTROL))  # grows at its end
        self.shown[part] = text

    def feed(self, ids: list[int]) -> None:
        for token in ids:
            if self.in_thinking:
                self.thinking.append(token)
                if token == self.end_id:
                    self._show("thinking", self.thinking)
                    self.in_thinking = False
                    self._style(RESET)
                    self.out.write("\n")
                    self._style(BOLD)
                    self.out.write(f"{self.label}> ")
                    self._style(RESET)
            else:
                self.answer.append(token)
        self._show("thinking" if self.in_thinking else "answer",
                   self.thinking if self.in_thinking else self.answer)
        self.out.flush()

    def finish(self, stopped: bool) -> str:
        """End the reply's lines; the answer's text (what the history keeps)."""
        self._style(RESET)
        self.out.write(" [stopped]\n" if stopped else "\n")
        self.out.flush()
        return self._decode(self.answer).strip()

    @property
    def thinking_text(self) -> str:
        return self._decode(self.thinking).strip()

"""Text from data (a dataset's prompt, a model's output, a persona, a server's error) shown to
people: control characters that would drive a terminal are neutralised first."""

from __future__ import annotations

# C0 but tab and newline, DEL, C1 (0x9b is a one-byte CSI on some terminals), and lone
# surrogates (which no terminal encoding can print)
CONTROL = {c: "\ufffd" for c in [*range(0x00, 0x09), *range(0x0b, 0x20), *range(0x7f, 0xa0),
                                 *range(0xd800, 0xe000)]}


def printable(text: str) -> str:
    """`text` with every control character (C0 but tab and newline, DEL, C1) and lone
    surrogate replaced by U+FFFD."""
    return text.translate(CONTROL)


def one_line(text: str) -> str:
    """`printable(text)` with line breaks and tabs shown as spaces: for a one-line message."""
    return " ".join(printable(text).split())


def is_text(value: object) -> bool:
    """Whether `value` is a str that is valid Unicode (no lone surrogate, as JSON's
    ``"\\ud800"`` gives): what a tokenizer, UTF-8 and DuckDB's JSON functions accept."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True

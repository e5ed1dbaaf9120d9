"""A judge's rubric: the messages sent for each generation (templates over the steer results'
columns, ``{output_text}``), and the answer format — an integer scale ``min..max`` read from
the reply by a stated rule (the first or last integer, a regular expression, or a JSON object,
sent as structured output when a schema is given), with optional labels for its values — and
the sampling. Read and checked once when a run is planned; one line names what is wrong.

    [messages]
    system = "You grade role-play."
    user = "Role: {persona}\\nReply: {output_text}\\nScore 0-3."
    [answer]
    scale = [0, 3]
    parse = "last-integer"        # first-integer | last-integer | regex | json
    labels = {"0" = "refused", "3" = "fully in role"}
    [sampling]
    temperature = 0.0
    max_tokens = 16
"""

from __future__ import annotations

import dataclasses
import json
import re
import string
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatspace.errors import BadInput

PARSE_RULES = ("first-integer", "last-integer", "regex", "json")
KEYS = {"messages": {"system", "user"},
        "answer": {"scale", "parse", "pattern", "labels", "json_schema", "score_field"},
        "sampling": {"temperature", "max_tokens"}}


@dataclass(frozen=True)
class Rubric:
    system: str
    user: str
    low: int
    high: int
    parse: str
    pattern: str | None
    labels: dict[int, str]
    json_schema: dict[str, Any] | None
    score_field: str
    temperature: float
    max_tokens: int

    def to_dict(self) -> dict[str, Any]:
        """As the plan records it (the file may change after), for `from_dict`."""
        return {**dataclasses.asdict(self), "labels": {str(k): v for k, v in self.labels.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rubric:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**{k: v for k, v in data.items() if k in fields},
                      "labels": {int(k): v for k, v in data["labels"].items()}})

    def fields(self) -> set[str]:
        """The results columns its messages name."""
        return {name for text in (self.system, self.user)
                for _, name, _, _ in string.Formatter().parse(text) if name is not None}

    def messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        """The chat messages for one generation (`row`: its results columns)."""
        values = {k: "" if v is None else str(v) for k, v in row.items()}
        out = [{"role": "system", "content": self.system.format_map(values)}] \
            if self.system else []
        return out + [{"role": "user", "content": self.user.format_map(values)}]

    def score(self, reply: str | None) -> int | None:
        """The score `reply` gives by the rubric's rule, None if it gives none in the scale."""
        if not reply:
            return None
        if self.parse == "json":
            try:
                value = json.loads(reply).get(self.score_field)
            except (ValueError, AttributeError):
                return None
        elif self.parse == "regex":
            found = re.search(self.pattern or "", reply)
            value = found.group(1) if found else None
        else:
            numbers = re.findall(r"-?\d+", reply)
            value = (numbers[0] if self.parse == "first-integer" else numbers[-1]) \
                if numbers else None
        if isinstance(value, bool):
            return None
        try:
            number = int(value) if isinstance(value, int | str) else None
        except ValueError:
            return None
        return number if number is not None and self.low <= number <= self.high else None

    def reminder(self) -> str:
        """What the judge is told when its reply gives no score (it is asked once more)."""
        if self.parse == "json":
            return (f"Reply with only a JSON object whose \"{self.score_field}\" is an integer "
                    f"from {self.low} to {self.high}.")
        return f"Reply with only an integer from {self.low} to {self.high}."

    def response_format(self) -> dict[str, Any] | None:
        """The structured output asked of an OpenAI endpoint (a JSON schema), if any."""
        if self.json_schema is None:
            return None
        return {"type": "json_schema",
                "json_schema": {"name": "judgment", "schema": self.json_schema, "strict": True}}

    def longest_answer(self) -> str:
        """The longest well-formed answer, for the output-token estimate."""
        widest = max((str(self.low), str(self.high)), key=len)
        return json.dumps({self.score_field: int(widest)}) if self.parse == "json" else widest


def load_rubric(path: str | Path, columns: set[str] | None = None) -> Rubric:
    """The rubric in `path`; BadInput naming the file and what is wrong. With `columns`, a
    template field that is not one of them is wrong too."""
    where = f"rubric {path}"
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BadInput(f"{where}: file not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BadInput(f"{where}: not a readable TOML file ({exc})") from None
    for table, keys in raw.items():
        if table not in KEYS or not isinstance(keys, dict):
            raise BadInput(f"{where}: unknown table [{table}] (known: {', '.join(KEYS)})")
        unknown = set(keys) - KEYS[table]
        if unknown:
            raise BadInput(f"{where}: unknown key {table}.{sorted(unknown)[0]} (known: "
                           f"{', '.join(sorted(KEYS[table]))})")
    messages, answer = raw.get("messages", {}), raw.get("answer", {})
    sampling = raw.get("sampling", {})
    rubric = Rubric(
        system=_text(messages.get("system", ""), where, "messages.system"),
        user=_text(messages.get("user"), where, "messages.user"),
        **_scale(answer.get("scale"), where),
        parse=_parse_rule(answer, where),
        pattern=answer.get("pattern"),
        labels=_labels(answer.get("labels", {}), where),
        json_schema=answer.get("json_schema"),
        score_field=str(answer.get("score_field", "score")),
        temperature=_number(sampling.get("temperature", 0.0), where, "sampling.temperature",
                            float, 0),
        max_tokens=_number(sampling.get("max_tokens", 16), where, "sampling.max_tokens", int, 1))
    _check_fields(rubric, where, columns)
    if rubric.json_schema is not None and (rubric.parse != "json" or
                                           not isinstance(rubric.json_schema, dict)):
        raise BadInput(f"{where}: answer.json_schema needs answer.parse = \"json\" and a "
                       "table (the schema)")
    for score in rubric.labels:
        if not rubric.low <= score <= rubric.high:
            raise BadInput(f"{where}: answer.labels names {score}, outside the scale "
                           f"{rubric.low}..{rubric.high}")
    return rubric


def _text(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str) or (key == "messages.user" and not value.strip()):
        raise BadInput(f"{where}: {key} must be a non-empty string")
    return value


def _scale(value: Any, where: str) -> dict[str, int]:
    if not (isinstance(value, list) and len(value) == 2 and
            all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            and value[0] < value[1]):
        raise BadInput(f"{where}: answer.scale must be [min, max], two integers with min < max, "
                       f"got {value!r}")
    return {"low": value[0], "high": value[1]}


def _parse_rule(answer: dict[str, Any], where: str) -> str:
    rule = answer.get("parse")
    if rule is None:
        raise BadInput(f"{where}: answer.scale needs a parse rule: answer.parse = one of "
                       f"{', '.join(PARSE_RULES)}")
    if rule not in PARSE_RULES:
        raise BadInput(f"{where}: answer.parse must be one of {', '.join(PARSE_RULES)}, got "
                       f"{rule!r}")
    pattern = answer.get("pattern")
    if rule == "regex":
        try:
            groups = re.compile(pattern).groups if isinstance(pattern, str) else 0
        except re.error as exc:
            raise BadInput(f"{where}: answer.pattern is not a regular expression ({exc})") \
                from None
        if groups != 1:
            raise BadInput(f"{where}: answer.parse = \"regex\" needs answer.pattern with one "
                           "group (the score)")
    return rule


def _labels(value: Any, where: str) -> dict[int, str]:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and re.fullmatch(r"-?\d+", k) and isinstance(v, str)
            for k, v in value.items()):
        raise BadInput(f"{where}: answer.labels must map scores (\"0\", \"1\", …) to strings")
    return {int(k): v for k, v in value.items()}


def _number(value: Any, where: str, key: str, kind: type, low: float) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            (kind is int and not isinstance(value, int)) or value < low:
        raise BadInput(f"{where}: {key} must be a {kind.__name__} >= {low}, got {value!r}")
    return kind(value)


def _check_fields(rubric: Rubric, where: str, columns: set[str] | None) -> None:
    for text, key in ((rubric.system, "messages.system"), (rubric.user, "messages.user")):
        try:
            names = [name for _, name, spec, conv in string.Formatter().parse(text)
                     if name is not None]
        except ValueError as exc:
            raise BadInput(f"{where}: {key} is not a template ({exc}; write {{{{ and }}}} for "
                           "literal braces)") from None
        for name in names:
            if not name.isidentifier():
                raise BadInput(f"{where}: {key} names {{{name}}}: a field is a results "
                               "column's name")
            if columns is not None and name not in columns:
                raise BadInput(f"{where}: {key} names {{{name}}}, not a results column "
                               f"(columns: {', '.join(sorted(columns))})")

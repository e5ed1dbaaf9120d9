"""Typed JSON records: `Item` (an object inside a record) and `Record` (a record file, with its
``format``, ``version`` and path), each a frozen dataclass with one parse/serialise pair that
checks every field's JSON type. A record without ``format`` and ``version`` was written by a
release before versions (version 1) and reads the same way; a record of a newer version than
this chatspace knows is `NewerRecord`, naming both versions. The records themselves are in
`chatspace.runs.formats`.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

from chatspace.errors import RunFailed


class NewerRecord(RunFailed):
    """A record written by a newer chatspace, in a version this one cannot read."""


class UnreadableRecord(RunFailed):
    """A record that exists but does not parse into its type: torn by a crash or a full disk,
    edited, or not a file chatspace wrote."""


INT64 = 1 << 63


def doc(text: str, default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A field with its documentation (docs/formats.md lists it)."""
    if default is not dataclasses.MISSING:
        kwargs["default"] = default
    return field(metadata={"doc": text}, **kwargs)


@dataclass(frozen=True)
class Item:
    """A typed object inside a record (a file entry, a task's slice)."""

    OMIT_NONE: ClassVar[bool] = False  # leave out optional fields that are None

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Self:
        if not isinstance(data, dict):
            raise TypeError(f"a {cls.__name__} is {str(data)[:40]!r}, not an object")
        return cls(**_typed(cls, {k: v for k, v in data.items() if k in _names(cls)}))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)
                if not (self.OMIT_NONE and getattr(self, f.name) is None
                        and f.default is not dataclasses.MISSING)}


@dataclass(frozen=True)
class Record(Item):
    """A record file: its machinery fields typed, the kind's fields in `details`."""

    FORMAT: ClassVar[str]
    VERSION: ClassVar[int]
    PATH: ClassVar[str]  # where it is written: the docs print it, `path_in` fills it in
    WRITER: ClassVar[str]  # who writes it and when it is complete, for the docs

    @classmethod
    def path_in(cls, root: Path, **fields: Any) -> Path:
        """Where this record lives under `root`: its PATH with `fields` filled in."""
        return root / cls.PATH.format(**fields)

    @classmethod
    def file_name(cls) -> str:
        """The name its PATH gives the file itself."""
        return cls.PATH.rsplit("/", 1)[-1]

    @classmethod
    def folder_in(cls, root: Path, **fields: Any) -> Path:
        """The folder its PATH puts it in, under `root`, with the folder's `fields` filled in."""
        return root / cls.PATH.rsplit("/", 1)[0].format(**fields)

    @classmethod
    def parse(cls, data: dict[str, Any], where: object = "record") -> Self:
        if not isinstance(data, dict):
            raise UnreadableRecord(f"{where} is not a {cls.FORMAT} record (a JSON "
                                   f"{type(data).__name__}, not an object)")
        given_format = data.get("format", cls.FORMAT)
        if given_format != cls.FORMAT:
            raise UnreadableRecord(f"{where} is a {str(given_format)[:40]!r} record, not "
                                   f"{cls.FORMAT!r}")
        version = data.get("version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise UnreadableRecord(f"{where} has version {str(version)[:20]!r}, which is not "
                                   "a version number")
        if version > cls.VERSION:
            raise NewerRecord(f"{where} is {cls.FORMAT} version {version}; this chatspace "
                              f"reads up to version {cls.VERSION}: upgrade chatspace to read it")
        names = _names(cls) - {"details"}
        details = {k: v for k, v in data.items() if k not in names | {"format", "version"}}
        known = {k: v for k, v in data.items() if k in names}
        return cls(**_typed(cls, known), details=details)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in super().to_dict().items() if k != "details"}
        return {"format": self.FORMAT, "version": self.VERSION, **self.details, **out}


@functools.cache
def _names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """Each field's type, ``X | None`` unwrapped to X (read once per type)."""
    return {name: _unwrap(hint) for name, hint in typing.get_type_hints(cls).items()}


@functools.cache
def _nullable(cls: type) -> frozenset[str]:
    """The fields that may be null (``X | None``)."""
    return frozenset(name for name, hint in typing.get_type_hints(cls).items()
                     if type(None) in typing.get_args(hint))


_JSON_TYPES: dict[Any, tuple[type, ...]] = {
    str: (str,), int: (int,), float: (int, float), bool: (bool,), dict: (dict,),
    tuple: (list, tuple)}


def _check_type(cls: type, name: str, hint: Any, value: Any) -> None:
    """TypeError unless `value` is what JSON gives for `hint` (an int within 64 bits, a bool
    that is no int)."""
    if value is None:
        if name not in _nullable(cls):
            raise TypeError(f"{cls.__name__}.{name} is null")
        return
    expected = _JSON_TYPES.get(typing.get_origin(hint) or hint)
    if expected is None:
        return
    wrong = not isinstance(value, expected) or (bool not in expected and isinstance(value, bool))
    if not wrong and isinstance(value, int) and not -INT64 <= value < INT64:
        wrong = True
    if wrong:
        raise TypeError(f"{cls.__name__}.{name} is {str(value)[:40]!r}, not a "
                        f"{expected[0].__name__}")


def _typed(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Nested typed objects (lists of `Item`s, an `Item`) built from their dicts; TypeError
    when a value is not of its field's type."""
    hints = _hints(cls)
    out = {}
    for name, value in values.items():
        hint = hints[name]
        args = typing.get_args(hint)
        if not _is_item(hint) or value is None:
            _check_type(cls, name, hint, value)
        if value is not None and typing.get_origin(hint) is tuple:  # JSON lists as tuples
            value = tuple(args[0].parse(v) if _is_item(args[0]) else v for v in value)
        elif value is not None and _is_item(hint):
            value = hint.parse(value)
        out[name] = value
    return out


def _unwrap(hint: Any) -> Any:
    """``X | None`` -> X."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) and \
        len(args) == 1 else hint


def _is_item(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, Item)


def _plain(value: Any) -> Any:
    if isinstance(value, Item):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


# -- the records ---------------------------------------------------------------------------

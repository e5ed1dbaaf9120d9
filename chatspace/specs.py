"""Job specs: TOML files with one table per concern, overridden by CLI flags, validated once.

Every job type's spec is a frozen dataclass of section dataclasses that ends with the shared
``[run]`` and ``[slurm]`` tables (`JobSpec`). This module reads a spec file, type-checks each
key against its dataclass field and builds the spec; the job type's `validate` checks what
types cannot say. Everything downstream trusts the result.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from chatspace.errors import BadInput
from chatspace.names import check_name


@dataclass(frozen=True)
class RunConfig:
    array: int = 1
    part_rows: int = 2048
    name: str | None = None  # a label for the run (default: the spec file's name)


@dataclass(frozen=True)
class ReduceConfig:
    """The reduce job's own small CPU resources (``[slurm.reduce]``): never the tasks' GPU
    partition, constraint or time unless asked."""

    partition: str | None = None  # default: the cluster's default partition
    time: str = "0:30:00"
    mem: str = "4G"
    cpus: int = 1


@dataclass(frozen=True)
class SlurmConfig:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    mem: str | None = None
    cpus_per_task: int | None = None
    gpus_per_task: int | None = None
    constraint: str | None = None
    exclude: str | None = None
    array_parallelism: int | None = None
    job_name: str | None = None
    sbatch_args: list[str] = field(default_factory=list)
    container: str | None = None
    reduce: ReduceConfig = ReduceConfig()

    def validate(self) -> None:
        """What can be checked without the cluster (`check_slurm_options` asks it the rest)."""
        for value in (self.time, self.reduce.time):
            if value is not None:
                parse_time(value)
        for name in ("array_parallelism", "cpus_per_task", "gpus_per_task"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BadInput(f"slurm.{name} must be >= 1, got {value}")
        if self.reduce.cpus < 1:
            raise BadInput(f"slurm.reduce.cpus must be >= 1, got {self.reduce.cpus}")
        for arg in self.sbatch_args:
            if not isinstance(arg, str) or not arg.startswith("--") or "=" not in arg:
                raise BadInput(f"--sbatch-arg {arg!r} must look like --key=value "
                               "(slurm.sbatch_args)")


_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_time(value: str) -> int:
    """SLURM time (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) in whole minutes (rounded up)."""
    match = _TIME.match(value.strip())
    if not match:
        raise BadInput(f"slurm.time (--time) {value!r} is not a SLURM time "
                       "(e.g. 30, 2:00:00, 1-12:00:00)")
    days, a, b, c = match.groups()
    if days is not None:  # D-H[:M[:S]]
        seconds = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # H:M:S
        seconds = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # M:S
        seconds = int(a) * 60 + int(b)
    else:
        seconds = int(a) * 60
    if seconds <= 0:
        raise BadInput(f"slurm.time (--time) {value!r} must be positive")
    return -(-seconds // 60)



@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """The tables every job type shares; a job type's spec subclasses this."""

    run: RunConfig = RunConfig()
    slurm: SlurmConfig = SlurmConfig()

    def validate(self) -> None:
        """Raise BadInput naming the first wrong field (beyond what types can say)."""
        if self.run.array < 1:
            raise BadInput(f"run.array (--array) must be >= 1, got {self.run.array}")
        if self.run.part_rows < 1:
            raise BadInput(f"run.part_rows must be >= 1, got {self.run.part_rows}")
        if self.run.name is not None:
            check_name(self.run.name, "run.name (--name)")
        self.slurm.validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def work_dict(self) -> dict[str, Any]:
        """The part of the spec that determines the outputs (not where they run)."""
        out = self.to_dict()
        del out["slurm"]
        return out


Spec = TypeVar("Spec", bound=JobSpec)


def sections(spec_type: type[JobSpec]) -> dict[str, type]:
    """Table name -> section dataclass, for a spec type."""
    hints = typing.get_type_hints(spec_type)
    return {f.name: hints[f.name] for f in dataclasses.fields(spec_type)}


def read_spec_file(path: str | Path, known: dict[str, type]) -> dict[str, dict[str, Any]]:
    """Read a TOML job spec into ``{section: {key: value}}``."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise BadInput(f"spec file not found: {path}") from None
    except (UnicodeDecodeError, IsADirectoryError) as exc:
        raise BadInput(f"spec file {path} is not a TOML text file ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"spec file {path} is not valid TOML: {exc}") from None
    for section, table in raw.items():
        if section not in known:
            raise BadInput(f"{path}: unknown table [{section}] (known: {', '.join(known)})")
        wanted = list if _item_type(known[section]) else dict
        if not isinstance(table, wanted) or (
                wanted is list and not all(isinstance(t, dict) for t in table)):
            form = f"[[{section}]] tables" if wanted is list else f"a [{section}] table"
            raise BadInput(f"{path}: {section} must be {form}")
    return raw


def _item_type(hint: Any) -> type | None:
    """The dataclass of a section that is a list of tables (``[[steering]]``), else None."""
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return item
    return None


def _build(hint: Any, value: Any, where: str) -> Any:
    item = _item_type(hint)
    if item is None:
        return build_section(hint, value, where)
    return [build_section(item, entry, f"{where}[{n}]") for n, entry in enumerate(value)]


def _check_type(where: str, value: Any, hint: Any) -> Any:
    """Check one value against a dataclass field's type hint (str/int/float/bool/list/dict,
    or Optional of them)."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        origin = typing.get_origin(kind) or kind
        if origin is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin in (str, bool, list, dict) and isinstance(value, origin):
            return value
        if dataclasses.is_dataclass(origin) and isinstance(value, dict):
            return build_section(origin, value, where)
    names = " or ".join(getattr(k, "__name__", str(k)) for k in allowed if k is not type(None))
    raise BadInput(f"{where} must be {names}, got {value!r}")


def build_section(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise BadInput(f"unknown key {where}.{key} (known: {', '.join(sorted(known))})")
    checked = {k: _check_type(f"{where}.{k}", v, hints[k]) for k, v in values.items()}
    return cls(**checked)


def resolve_spec(spec_type: type[Spec], spec_path: str | Path | None,
                 overrides: dict[str, dict[str, Any]]) -> Spec:
    """Merge a spec file (optional) with CLI overrides (``None`` values are ignored), then
    validate every field that can be checked without touching the data."""
    known = sections(spec_type)
    merged: dict[str, Any] = {s: [] if _item_type(cls) else {} for s, cls in known.items()}
    if spec_path is not None:
        for section, table in read_spec_file(spec_path, known).items():
            merged[section] = table if isinstance(table, list) else {**merged[section], **table}
    for section, table in overrides.items():
        given = {k: v for k, v in table.items() if v is not None}
        top, _, sub = section.partition(".")  # "slurm.reduce": a table inside [slurm]
        if _item_type(known[top]):  # flags for a list of tables give one entry instead
            merged[top] = [given] if given else merged[top]
            continue
        into = merged[top].setdefault(sub, {}) if sub else merged[top]
        into.update(given)
    spec = spec_type(**{s: _build(cls, merged[s], s) for s, cls in known.items()})
    spec.validate()
    return spec


def spec_from_dict(spec_type: type[Spec], data: dict[str, Any]) -> Spec:
    """Rebuild a spec saved in a run record (validated when it was planned); a table that a
    later version added takes its defaults."""
    return spec_type(**{s: _build(cls, data.get(s, [] if _item_type(cls) else {}), s)
                        for s, cls in sections(spec_type).items()})

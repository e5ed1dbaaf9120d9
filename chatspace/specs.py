"""Job specs: TOML files with one table per concern, overridden by CLI flags, validated once.

Every kind's spec is a pydantic model (`JobSpec`) of section models (`Section`), ending
with the shared ``[run]`` and ``[slurm]`` tables. A field states its type, default, constraints
and help text once (`option`): the CLI generates its flag from it, and a value that breaks it
becomes one line naming the field and its flag (`sampling.n (--n) must be >= 1, got 0`).
Validators check what constraints cannot say and raise BadInput with their own line.
Everything downstream trusts the result.
"""

from __future__ import annotations

import re
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from chatspace.errors import BadInput
from chatspace.names import check_name


class Section(BaseModel):
    """One table of a spec: frozen, no unknown keys, no coercion (a TOML string is no int)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    flag_prefix: ClassVar[str] = ""  # generated flags are --{flag_prefix}{field-name}

    def check(self) -> None:
        """What types and constraints cannot say (BadInput naming the field): checked once
        every field of the whole spec has its type, tables inside first (`validated`)."""

    def check_all(self) -> None:
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, Section):
                value.check_all()
        self.check()


def option(default: Any = None, help: str = "", *, flag: str | None = None,
           **constraints: Any) -> Any:
    """A spec field: its default, help text and pydantic constraints (``ge=1``, ...); `flag`
    spells its CLI flag where ``--{prefix}{name}`` will not do (``|`` adds spellings, ``/``
    a negative for a switch)."""
    return Field(default, description=help, json_schema_extra={"flag": flag} if flag else None,
                 **constraints)


def flag_spellings(section: type[BaseModel], name: str) -> str:
    """The flag(s) of one field, as `option` or its name and the section's prefix say."""
    info = section.model_fields[name]
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if extra.get("flag"):
        return str(extra["flag"])
    flag = "--" + getattr(section, "flag_prefix", "") + name.replace("_", "-")
    return f"{flag}/--no-{flag[2:]}" if base_type(info.annotation) is bool else flag


def primary_flag(spellings: str) -> str:
    """The first spelling of a flag: ``--a|--b`` -> ``--a``, ``--x/--no-x`` -> ``--x``."""
    return spellings.split("|")[0].split("/")[0]


def base_type(hint: Any) -> Any:
    """A field's type without ``| None`` or ``Annotated`` validators."""
    if typing.get_origin(hint) in (typing.Union, type(int | None)):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint


def _fraction(value: float) -> float:
    if not 0 < value <= 1:
        raise ValueError("must be in (0, 1]")
    return value


Fraction = Annotated[float, AfterValidator(_fraction)]


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


class RunConfig(Section):
    array: int = option(1, "Number of tasks (slices).", ge=1)
    part_rows: int = option(2048, "Rows per committed part: the unit a killed task resumes "
                                  "from.", ge=1)
    name: str | None = option(None, "A label for the run (default: the spec file's name); "
                                    "steer runs write under it.")

    def check(self) -> None:
        if self.name is not None:
            check_name(self.name, "run.name (--name)")


class ReduceConfig(Section):
    """The reduce job's own small CPU resources (``[slurm.reduce]``): never the tasks' GPU
    partition, constraint or time unless asked."""

    flag_prefix: ClassVar[str] = "reduce-"
    partition: str | None = option(None, "The reduce job's partition (default: the cluster's "
                                         "default, not the tasks').")
    time: str = option("0:30:00", "The reduce job's time limit.")
    mem: str = option("4G", "The reduce job's memory.")
    cpus: int = option(1, "The reduce job's CPUs.", ge=1)

    def check(self) -> None:
        parse_time(self.time)


def layer_list(value: Any) -> Any:
    """Layers as a list, or as text: ``"46-53"`` (both ends included) or ``"8,12"``."""
    if not isinstance(value, str):
        return value
    layers: list[int] = []
    for piece in filter(None, (p.strip() for p in value.split(","))):
        first, dash, last = piece.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()) or \
                (dash and int(last) < int(first)):
            raise ValueError(f"{value!r} is not a layer list such as 46-53 or 8,12")
        layers += range(int(first), int(last) + 1) if dash else [int(first)]
    return layers


# layers: a list, or text such as "46-53" (a range) or "8,12"
LayerList = Annotated[list[int], BeforeValidator(layer_list)]


def _sbatch_args(args: Any) -> Any:
    for arg in args if isinstance(args, list) else []:
        if not isinstance(arg, str) or not arg.startswith("--") or "=" not in arg:
            raise BadInput(f"--sbatch-arg {arg!r} must look like --key=value "
                           "(slurm.sbatch_args)")
    return args


class SlurmConfig(Section):
    """What can be checked without the cluster (`check_slurm_options` asks it the rest)."""

    partition: str | None = option(None, "SLURM partition.")
    account: str | None = option(None)
    qos: str | None = option(None)
    time: str | None = option(None, "Per-task time limit, SLURM format (default 1:00:00).")
    mem: str | None = option(None, "Memory per task, e.g. 16G.")
    cpus_per_task: int | None = option(None, ge=1)
    gpus_per_task: int | None = option(None, ge=1)
    constraint: str | None = option(None)
    exclude: str | None = option(None, "Nodes to avoid.")
    array_parallelism: int | None = option(
        None, "At most K array tasks at once (the %K throttle; default: no throttle, all "
              "tasks may run at once).", ge=1)
    job_name: str | None = option(None)
    sbatch_args: Annotated[list[str], BeforeValidator(_sbatch_args)] = option(
        [], "Extra sbatch option as --key=value (repeatable).", flag="--sbatch-arg")
    container: str | None = option(None, "Apptainer image (.sif) to run tasks in.")
    reduce: ReduceConfig = ReduceConfig()

    def check(self) -> None:
        if self.time is not None:
            parse_time(self.time)


class JobSpec(Section):
    """The tables every kind shares; a kind's spec subclasses this with its own."""

    run: RunConfig = RunConfig()
    slurm: SlurmConfig = SlurmConfig()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def work_dict(self) -> dict[str, Any]:
        """The part of the spec that determines the outputs (not where they run)."""
        out = self.to_dict()
        del out["slurm"]
        return out


Spec = TypeVar("Spec", bound=BaseModel)

_CONSTRAINTS = {"greater_than_equal": "must be >= {ge}", "greater_than": "must be > {gt}",
                "less_than_equal": "must be <= {le}", "finite_number": "must be a finite number",
                "string_too_short": "must not be empty"}
_TYPES = {"int_type": "int", "float_type": "float", "string_type": "str", "bool_type": "bool",
          "list_type": "a list", "model_type": "a table", "dict_type": "a table"}


def _field(model: type[BaseModel], names: list[str]) -> tuple[Any, FieldInfo | None]:
    """The section and field that a validation error's location names (None: no field)."""
    section, info = model, None
    for name in names:
        if info is not None:
            section = base_type(info.annotation)
            section = typing.get_args(section)[0] if is_list(section) else section
        fields = getattr(section, "model_fields", {})
        if name not in fields:
            return section, None
        info = fields[name]
    return section, info


def error_line(spec_type: type[BaseModel], error: Any, where: str = "") -> str:
    """One line for a pydantic error: the field, and its flag where a flag gives the value
    (not inside a list of tables, whose flags describe a single entry)."""
    path, names = where, [p for p in error["loc"] if not isinstance(p, int)]
    for part in error["loc"]:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    kind, got = error["type"], error.get("input")
    section, info = _field(spec_type, names)
    if kind == "extra_forbidden":
        return f"unknown key {path} (known: {', '.join(sorted(section.model_fields))})"
    if kind in _TYPES:
        return f"{path} must be {_TYPES[kind]}, got {got!r}"
    in_list = any(isinstance(p, int) for p in error["loc"])
    flag = "" if in_list or info is None else \
        f" ({primary_flag(flag_spellings(section, names[-1]))})"
    if kind == "literal_error" and info is not None:
        choices = ", ".join(map(str, typing.get_args(base_type(info.annotation))))
        return f"{path}{flag} must be one of {choices}, got {got!r}"
    if kind in _CONSTRAINTS:
        return f"{path}{flag} {_CONSTRAINTS[kind].format(**error.get('ctx', {}))}, got {got!r}"
    if kind == "value_error":
        return f"{path}{flag} {error['ctx']['error']}, got {got!r}"
    return f"{path}: {error['msg']}, got {got!r}"


def validated(model: type[Spec], values: dict[str, Any], where: str = "") -> Spec:
    """`model` built from `values`, or BadInput with one line naming the first wrong field."""
    try:
        built = model.model_validate(values)
    except ValidationError as exc:
        raise BadInput(error_line(model, exc.errors()[0], where)) from None
    if isinstance(built, Section):
        built.check_all()
    return built


def sections(spec_type: type[JobSpec]) -> dict[str, Any]:
    """Table name -> section type (``list[...]`` for a list of tables), for a spec type."""
    return {name: info.annotation for name, info in spec_type.model_fields.items()}


def is_list(hint: Any) -> bool:
    """Whether a section is a list of tables (``[[steering]]``)."""
    return typing.get_origin(hint) is list


def read_spec_file(path: str | Path, known: dict[str, Any]) -> dict[str, Any]:
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
        wanted = list if is_list(known[section]) else dict
        if not isinstance(table, wanted) or (
                wanted is list and not all(isinstance(t, dict) for t in table)):
            form = f"[[{section}]] tables" if wanted is list else f"a [{section}] table"
            raise BadInput(f"{path}: {section} must be {form}")
    return raw


def resolve_spec(spec_type: type[Spec], spec_path: str | Path | None,
                 overrides: dict[str, dict[str, Any]]) -> Spec:
    """Merge a spec file (optional) with CLI overrides (``None`` values are ignored), then
    validate every field that can be checked without touching the data."""
    known = sections(spec_type)
    merged: dict[str, Any] = {s: [] if is_list(hint) else {} for s, hint in known.items()}
    if spec_path is not None:
        for section, table in read_spec_file(spec_path, known).items():
            merged[section] = table if isinstance(table, list) else {**merged[section], **table}
    for section, table in overrides.items():
        given = {k: v for k, v in table.items() if v is not None}
        top, _, sub = section.partition(".")  # "slurm.reduce": a table inside [slurm]
        if is_list(known[top]):  # flags for a list of tables give one entry instead
            merged[top] = [given] if given else merged[top]
            continue
        into = merged[top].setdefault(sub, {}) if sub else merged[top]
        into.update(given)
    return validated(spec_type, merged)


def spec_from_dict(spec_type: type[Spec], data: dict[str, Any]) -> Spec:
    """Rebuild a spec saved in a run record (validated when it was planned); a table that a
    later version added takes its defaults."""
    return validated(spec_type, data)

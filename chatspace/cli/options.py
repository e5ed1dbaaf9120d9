"""Command-line options: the flags that override job-spec keys, and the shared decorators.

A job spec's flags are generated from its fields (`spec_flags`): one per key of each table,
named, typed, defaulted and explained by the field itself (`chatspace.specs.option`), so a
default is written once. `spec_from_cli` turns the flags given into spec overrides.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel

from chatspace.errors import BadInput
from chatspace.kinds import KINDS
from chatspace.runs.files import default_root
from chatspace.runs.kind import Kind
from chatspace.runs.record import Run
from chatspace.specs import (
    JobSpec,
    SlurmConfig,
    base_type,
    flag_spellings,
    is_list,
    layer_list,
    primary_flag,
    resolve_spec,
    sections,
    validated,
)

SHARED = ("run", "slurm")  # the tables every spec has: their flags come after the kind's own


class NumberList(click.ParamType):
    """A comma-separated list of numbers: ``4,8,12`` or ``0.5,1,2`` (integers may be ranges:
    ``46-53``)."""

    def __init__(self, number: type):
        self.number, self.name = number, f"{number.__name__}s"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            if self.number is int:
                return layer_list(str(value))
            return [self.number(v) for v in str(value).split(",") if v.strip()]
        except ValueError:  # the spec's validation names the field and the value, in one line
            return str(value)


@dataclass(frozen=True)
class Flag:
    """A CLI flag that overrides one spec key (`table` may be nested: ``slurm.reduce``)."""

    spellings: str  # "--a|--b": both spellings; "--x/--no-x": a switch
    table: str
    key: str
    options: dict[str, Any]

    @property
    def param(self) -> str:
        return primary_flag(self.spellings).lstrip("-").replace("-", "_")


def _click_options(hint: Any, default: Any, help_text: str) -> dict[str, Any]:
    """click keywords for a field of type `hint`; the default goes into the help text (the
    option itself defaults to None: a flag not given leaves the spec file's value)."""
    base = base_type(hint)
    options: dict[str, Any] = {"default": None}
    if typing.get_origin(base) is typing.Literal:
        options["type"] = click.Choice([str(c) for c in typing.get_args(base)])
    elif is_list(base):
        (item,) = typing.get_args(base)
        options.update({"multiple": True} if item is str else
                       {"type": NumberList(int if item is int else float)})
    elif base in (int, float):
        options["type"] = base
    shown = {True: "on", False: "off"}.get(default, default) if isinstance(default, bool) \
        else default
    if shown not in (None, "", []):
        help_text = f"{help_text.rstrip('.')} (default: {shown}).".lstrip()
    return {**options, "help": help_text or None}


def _section_flags(section: type[BaseModel], table: str) -> list[Flag]:
    flags = []
    for name, info in section.model_fields.items():
        hint = base_type(info.annotation)
        if isinstance(hint, type) and issubclass(hint, BaseModel):
            flags += _section_flags(hint, f"{table}.{name}")
            continue
        flags.append(Flag(flag_spellings(section, name), table, name,
                          _click_options(info.annotation, info.default,
                                         info.description or "")))
    return flags


def spec_flags(spec_type: type[JobSpec]) -> list[Flag]:
    """One flag per key of every table of `spec_type`: the kind's own tables, then [run] and
    [slurm]."""
    tables = sections(spec_type)
    flags = []
    for table in [t for t in tables if t not in SHARED] + list(SHARED):
        hint = tables[table]
        flags += _section_flags(typing.get_args(hint)[0] if is_list(hint) else hint, table)
    params = [f.param for f in flags]
    assert len(params) == len(set(params)), f"two flags of {spec_type.__name__} share a name"
    return flags


def _add_options(fn: Callable, flags: list[Flag]) -> Callable:
    """One click option per flag; ``--a|--b`` gives the option both spellings."""
    for flag in reversed(flags):
        fn = click.option(*flag.spellings.split("|"), flag.param, **flag.options)(fn)
    return fn


def spec_options(kind: Kind) -> Callable[[Callable], Callable]:
    """SPEC_FILE and the flags of the kind's tables and [run] ([slurm]'s: `slurm_options`)."""
    flags = [f for f in spec_flags(kind.spec_type) if f.table.split(".")[0] != "slurm"]

    def decorate(fn: Callable) -> Callable:
        fn = _add_options(fn, flags)
        if kind.argument:  # a spec file, or the value of the key the kind names
            return click.argument("spec_file", required=False,
                                  metavar=f"[SPEC_FILE|{kind.argument[0].upper()}]")(fn)
        return click.argument("spec_file", required=False, type=click.Path(dir_okay=False))(fn)
    return decorate


SLURM_FLAGS = [f for f in spec_flags(JobSpec) if f.table.split(".")[0] == "slurm"]


def slurm_options(fn: Callable) -> Callable:
    return _add_options(fn, SLURM_FLAGS)


def overrides_from(params: dict[str, Any], flags: list[Flag]) -> dict[str, dict[str, Any]]:
    """Spec overrides from CLI params; an option not given (None, or empty for a repeatable
    one) leaves the spec's value."""
    overrides: dict[str, dict[str, Any]] = {}
    for flag in flags:
        value = params.get(flag.param)
        if isinstance(value, tuple):  # a repeatable option
            value = list(value) or None
        overrides.setdefault(flag.table, {})[flag.key] = value
    return overrides


def slurm_from_cli(current: SlurmConfig, params: dict[str, Any]) -> SlurmConfig:
    """`current` with the SLURM flags that were given (for `resume`)."""
    given = overrides_from(params, SLURM_FLAGS)
    values = current.model_dump()
    values.update({k: v for k, v in given["slurm"].items() if v is not None})
    values["reduce"].update({k: v for k, v in given["slurm.reduce"].items() if v is not None})
    return validated(SlurmConfig, values, "slurm")


def spec_from_cli(kind: Kind, spec_file: str | None, params: dict[str, Any]) -> JobSpec:
    if kind.argument and spec_file is not None and not spec_file.endswith(".toml"):
        # `submit serve MODEL`: the first argument is the key the kind names, not a spec file
        param = next(f.param for f in spec_flags(kind.spec_type)
                     if (f.table, f.key) == kind.argument)
        if params.get(param) is not None:
            raise BadInput(f"{spec_file!r} is not a spec file (.toml), and --{param} is given "
                           "too: give one of them")
        spec_file, params = None, {**params, param: spec_file}
    spec = resolve_spec(kind.spec_type, spec_file,
                        overrides_from(params, spec_flags(kind.spec_type)))
    if spec.run.name is None and spec_file is not None:
        named = {**spec.run.model_dump(), "name": Path(spec_file).stem}
        spec = validated(kind.spec_type, {**spec.model_dump(), "run": named})
    return spec


def check_executor(executor: str | None, parallelism: int | None,
                   container: str | None = None) -> str:
    """The executor to use (default slurm), refusing flags it would ignore. SLURM itself
    (sbatch on PATH, its options) is checked by `chatspace.runs.slurm.check_slurm_options`."""
    executor = executor or "slurm"
    if parallelism is not None and parallelism < 1:
        raise BadInput(f"--parallelism must be >= 1, got {parallelism}")
    if parallelism is not None and executor != "local":
        raise BadInput(f"--parallelism applies to --executor local only, not {executor} "
                       "(on SLURM use --array-parallelism)")
    if container is not None and executor != "slurm":
        raise BadInput(f"--container applies to --executor slurm only, not {executor} "
                       "(local and debug tasks run in this environment)")
    return executor


def executor_options(fn: Callable) -> Callable:
    fn = click.option("--wait", is_flag=True,
                      help="slurm: follow the run to its end; exit 0 on success, 1 on "
                           "failure (local and debug always run to the end).")(fn)
    fn = click.option("--parallelism", type=int, default=None,
                      help="local: at most K task processes at once (default: one per GPU, "
                           "each on its own, else one per core).")(fn)
    return click.option("--executor", type=click.Choice(["slurm", "local", "debug"]),
                        default=None,
                        help="Where tasks run (default: slurm when sbatch is on PATH).")(fn)


def root_option(fn: Callable) -> Callable:
    return click.option("--root", type=click.Path(file_okay=False), default=None,
                        help="Workspace root (default: $CHATSPACE_ROOT or /workspace).")(fn)


def resolve_root(root: str | None) -> Path:
    return Path(root).expanduser().resolve() if root else default_root()


def json_option(fn: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")(fn)


def run_argument(fn: Callable) -> Callable:
    """RUN (a run id under --root, or a run directory) and --root."""
    return click.argument("run_ref", metavar="RUN")(root_option(fn))


def open_run(run_ref: str, root: str | None, task: int | None = None) -> Run:
    """The planned run RUN refers to; with `task`, also check that the task exists."""
    run = Run.open(run_ref, resolve_root(root), KINDS)
    if task is not None and not 0 <= task < run.num_tasks:
        raise BadInput(f"--task {task} is out of range: run {run.run_id} has tasks "
                       f"0..{run.num_tasks - 1}")
    return run

"""Command-line options: the flags that override job-spec keys, and the shared decorators.

A flag is (flag, spec table, key, click options): a job type lists the flags of its own tables,
this module those of the shared ``[run]`` and ``[slurm]`` tables; `spec_from_cli` turns the
given flags into spec overrides, so every spec key has exactly one flag.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from chatspace.errors import BadInput
from chatspace.jobs import open_run as open_job_run
from chatspace.runs.job import Flag, JobType
from chatspace.runs.record import Run, default_root
from chatspace.specs import JobSpec, SlurmConfig, build_section, resolve_spec

RUN_FLAGS: list[Flag] = [
    ("--array", "run", "array", {"type": int, "help": "Number of tasks (slices)."}),
    ("--part-rows", "run", "part_rows", {"type": int, "help": "Rows per committed part: the "
                                                              "unit a killed task resumes from."}),
    ("--name", "run", "name", {"help": "A label for the run (default: the spec file's name); "
                                       "steer runs write under it."}),
]

SLURM_FLAGS: list[Flag] = [
    ("--partition", "slurm", "partition", {"help": "SLURM partition."}),
    ("--account", "slurm", "account", {}),
    ("--qos", "slurm", "qos", {}),
    ("--time", "slurm", "time", {"help": "Per-task time limit, SLURM format (default 1:00:00)."}),
    ("--mem", "slurm", "mem", {"help": "Memory per task, e.g. 16G."}),
    ("--cpus-per-task", "slurm", "cpus_per_task", {"type": int}),
    ("--gpus-per-task", "slurm", "gpus_per_task", {"type": int}),
    ("--constraint", "slurm", "constraint", {}),
    ("--exclude", "slurm", "exclude", {"help": "Nodes to avoid."}),
    ("--array-parallelism", "slurm", "array_parallelism",
     {"type": int, "help": "At most K array tasks at once (the %K throttle; default: no "
                           "throttle, all tasks may run at once)."}),
    ("--job-name", "slurm", "job_name", {}),
    ("--sbatch-arg", "slurm", "sbatch_args",
     {"multiple": True, "help": "Extra sbatch option as --key=value (repeatable)."}),
    ("--container", "slurm", "container",
     {"type": click.Path(dir_okay=False), "help": "Apptainer image (.sif) to run tasks in."}),
    ("--reduce-partition", "slurm.reduce", "partition",
     {"help": "The reduce job's partition (default: the cluster's default, not the tasks')."}),
    ("--reduce-time", "slurm.reduce", "time", {"help": "The reduce job's time limit (0:30:00)."}),
    ("--reduce-mem", "slurm.reduce", "mem", {"help": "The reduce job's memory (4G)."}),
    ("--reduce-cpus", "slurm.reduce", "cpus", {"type": int, "help": "The reduce job's CPUs (1)."}),
]


def _param_name(flag: str) -> str:
    return flag.split("|")[0].split("/")[0].lstrip("-").replace("-", "_")


def _add_options(fn: Callable, flags: list) -> Callable:
    """One click option per flag; ``--a|--b`` gives the option both spellings."""
    for flag, _, _, kwargs in reversed(flags):
        fn = click.option(*flag.split("|"), _param_name(flag), **kwargs)(fn)
    return fn


def spec_options(job: JobType) -> Callable[[Callable], Callable]:
    """SPEC_FILE and the job type's flags, then --array and --part-rows."""
    def decorate(fn: Callable) -> Callable:
        fn = _add_options(fn, job.flags + RUN_FLAGS)
        return click.argument("spec_file", required=False, type=click.Path(dir_okay=False))(fn)
    return decorate


def slurm_options(fn: Callable) -> Callable:
    return _add_options(fn, SLURM_FLAGS)


def overrides_from(params: dict[str, Any], flags: list) -> dict[str, dict[str, Any]]:
    """Spec overrides from CLI params; an option not given (None, or empty for a repeatable
    one) leaves the spec's value."""
    overrides: dict[str, dict[str, Any]] = {}
    for flag, table, key, _ in flags:
        value = params.get(_param_name(flag))
        if isinstance(value, tuple):  # a repeatable option
            value = list(value) or None
        overrides.setdefault(table, {})[key] = value
    return overrides


def slurm_from_cli(current: SlurmConfig, params: dict[str, Any]) -> SlurmConfig:
    """`current` with the SLURM flags that were given (for `resume`)."""
    given = overrides_from(params, SLURM_FLAGS)
    values = dataclasses.asdict(current)
    values.update({k: v for k, v in given["slurm"].items() if v is not None})
    values["reduce"].update({k: v for k, v in given["slurm.reduce"].items() if v is not None})
    config = build_section(SlurmConfig, values, "slurm")
    config.validate()
    return config


def spec_from_cli(job: JobType, spec_file: str | None, params: dict[str, Any]) -> JobSpec:
    spec = resolve_spec(job.spec_type, spec_file,
                        overrides_from(params, job.flags + RUN_FLAGS + SLURM_FLAGS))
    if spec.run.name is None and spec_file is not None:
        spec = dataclasses.replace(spec, run=dataclasses.replace(spec.run,
                                                                 name=Path(spec_file).stem))
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
    run = open_job_run(run_ref, resolve_root(root))
    if task is not None and not 0 <= task < run.num_tasks:
        raise BadInput(f"--task {task} is out of range: run {run.run_id} has tasks "
                       f"0..{run.num_tasks - 1}")
    return run

"""Commands that start and stop runs, the same for every kind: ``plan KIND``, ``submit
KIND`` (one subcommand per registered kind), ``resume``, ``cancel``, and the ``run task`` /
``run reduce`` entry points that executors and the sbatch templates call."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import click

from chatspace.cli.options import (
    check_executor,
    executor_options,
    json_option,
    open_run,
    resolve_root,
    root_option,
    run_argument,
    slurm_from_cli,
    slurm_options,
    spec_from_cli,
    spec_options,
)
from chatspace.cli.output import emit, run_summary
from chatspace.errors import BadInput, RunFailed
from chatspace.kinds import KINDS
from chatspace.runs.kind import Kind
from chatspace.runs.plan import Planned, plan_run
from chatspace.runs.record import Run
from chatspace.specs import SlurmConfig

log = logging.getLogger("chatspace")


def run_id_option(fn: Callable) -> Callable:
    return click.option("--run-id", default=None,
                        help="Run id (default: timestamp + random suffix); an existing id "
                             "with the same spec resumes that run.")(fn)


def execute_option(fn: Callable) -> Callable:
    return click.option("--execute", is_flag=True,
                        help="Run work that costs money (API backends); without it such a run "
                             "is only estimated and nothing is written.")(fn)


def _dry_run(planned: Planned, as_json: bool) -> None:
    emit(as_json, {"dry_run": True, "estimate": planned.estimate},
         [*planned.estimate, "dry run: nothing written; add --execute to run it"])


def _sbatch_lines(run: Run) -> list[str]:
    """The sbatch lines for the templates, split at the cluster's MaxArraySize when SLURM can be
    asked (else at SLURM's default, 1001, said in a comment)."""
    from chatspace.runs.slurm import sbatch_lines
    from chatspace.runs.slurm_cli import SlurmUnavailable, cluster_config

    try:
        return sbatch_lines(run, int(cluster_config().get("MaxArraySize", "1001")))
    except SlurmUnavailable as exc:
        return [f"# SLURM cannot be asked ({exc}): arrays split at SLURM's default "
                "MaxArraySize of 1001", *sbatch_lines(run, 1001)]


def plan_command(kind: Kind) -> click.Command:
    @click.command(kind.name, help=f"Plan a {kind.name} run from SPEC_FILE (TOML) and/or flags; "
                                  "print the run directory, then the sbatch commands that run "
                                  "it with the templates in hpc/.")
    @spec_options(kind)
    @slurm_options
    @root_option
    @run_id_option
    @execute_option
    @json_option
    def command(spec_file: str | None, root: str | None, run_id: str | None, execute: bool,
                as_json: bool, **params: Any) -> None:
        spec = spec_from_cli(kind, spec_file, params)
        planned = plan_run(kind, spec, resolve_root(root), run_id, execute)
        if planned.run is None or (planned.estimate and not execute):
            _dry_run(planned, as_json)
            return
        run = planned.run
        sbatch = _sbatch_lines(run)
        emit(as_json, {**run_summary(run), "sbatch": sbatch, "estimate": planned.estimate},
             [str(run.dir), "# run it with the sbatch templates, from the repository root:",
              *sbatch])
    return command


def submit_command(kind: Kind) -> click.Command:
    @click.command(kind.name, help=kind.help() + "\n\nWith SLURM, one job array per MaxArraySize "
                   "tasks and a reduce job (afterok) are submitted; `submit` returns at once "
                   "unless --wait.")
    @spec_options(kind)
    @slurm_options
    @root_option
    @run_id_option
    @execute_option
    @executor_options
    @json_option
    def command(spec_file: str | None, root: str | None, run_id: str | None, execute: bool,
                executor: str | None, parallelism: int | None, wait: bool, as_json: bool,
                **params: Any) -> None:
        executor = check_executor(executor, parallelism, params.get("container"))
        spec = spec_from_cli(kind, spec_file, params)
        max_array = 0
        if executor == "slurm":
            from chatspace.runs.slurm import check_slurm_options

            max_array = check_slurm_options(spec.slurm)
        planned = plan_run(kind, spec, resolve_root(root), run_id, execute)
        if planned.run is None or (planned.estimate and not execute):
            _dry_run(planned, as_json)
            return
        for line in planned.estimate:
            log.info("%s", line)
        if not planned.new:
            log.info("run %s exists with this spec: running its unfinished tasks",
                     planned.run.run_id)
        launch_run(planned.run, executor, spec.slurm, max_array, parallelism, wait, as_json)
    return command


def launch_run(run: Run, executor: str, slurm: SlurmConfig, max_array: int,
               parallelism: int | None, wait: bool, as_json: bool,
               check_hash: bool = False) -> None:
    """Launch the run's unfinished tasks and say what happened; `check_hash` (resume): done
    tasks are told by their outputs' sha256, not only their sizes."""
    from chatspace.runs.executors import launch

    submission = launch(run, executor, slurm=slurm, max_array=max_array,
                        parallelism=parallelism, wait=wait, progress=not as_json,
                        check_hash=check_hash)
    record = (submission.to_dict() if submission is not None else
              {"executor": executor, "tasks": [], "arrays": [], "nothing_to_do": True})
    summary = {**run_summary(run), "executor": executor, "submission": record}
    if submission is None:
        lines = [f"run {run.run_id} is complete and its manifest verifies: nothing to do",
                 f"manifest: {run.manifest_path}"]
    elif run.manifest_path.exists():
        lines = [f"run {run.run_id} done", f"run dir:  {run.dir}",
                 f"manifest: {run.manifest_path}"]
    else:
        arrays = ", ".join(f"{a['job_id']} ({len(a['tasks'])} tasks)" for a in record["arrays"])
        lines = [f"submitted run {run.run_id}: arrays {arrays or 'none'}, reduce job "
                 f"{record['reduce_job_id']}", f"run dir: {run.dir}",
                 f"watch:   chatspace status {run.dir}"]
    emit(as_json, summary, lines)


@click.group("plan")
def plan_group() -> None:
    """Plan a run: write its run record, run nothing."""


@click.group("submit")
def submit_group() -> None:
    """Plan a run and execute it (SLURM, local processes, or in-process)."""


for _job in KINDS.values():
    plan_group.add_command(plan_command(_job))
    submit_group.add_command(submit_command(_job))


@click.command()
@click.argument("run_ref", metavar="RUN")
@slurm_options
@root_option
@executor_options
@click.option("--force", is_flag=True, help="Cancel the run's queued or running jobs first.")
@json_option
def resume(run_ref: str, root: str | None, executor: str | None, parallelism: int | None,
           wait: bool, force: bool, as_json: bool, **params: Any) -> None:
    """Rerun only RUN's tasks that are not done (missing, failed, partial or lost outputs; one
    compacted array on SLURM), then a new reduce. SLURM options default to the run's own."""
    from chatspace.runs.slurm import check_slurm_options
    from chatspace.runs.slurm_cli import SlurmUnavailable, cancel

    run = open_run(run_ref, root)
    history = run.submissions()
    executor = check_executor(executor or (history[-1].executor if history else None),
                              parallelism, params.get("container"))
    slurm = slurm_from_cli(run.spec.slurm, params)
    max_array = check_slurm_options(slurm) if executor == "slurm" else 0
    try:
        live, stale = _jobs_of(run)
    except SlurmUnavailable as exc:
        raise BadInput(f"cannot ask SLURM about run {run.run_id}'s jobs: {exc}") from None
    if live and not force:
        raise BadInput(f"run {run.run_id} still has queued or running jobs "
                       f"({', '.join(live)}): wait, or use --force to cancel them first")
    try:
        cancel(live + stale)
    except SlurmUnavailable as exc:
        raise BadInput(f"cannot cancel run {run.run_id}'s jobs: {exc}") from None
    launch_run(run, executor, slurm, max_array, parallelism, wait, as_json, check_hash=True)


def _jobs_of(run: Run) -> tuple[list[str], list[str]]:
    """The run's queued or running SLURM jobs and its stale reduce jobs (`live_jobs`). When
    SLURM cannot be asked: none if no submission or attempt of the run came from SLURM,
    else SlurmUnavailable."""
    from chatspace.runs.attempts import attempts
    from chatspace.runs.slurm_cli import SlurmUnavailable, live_jobs

    try:
        return live_jobs(run)
    except SlurmUnavailable as exc:
        if any(r.executor == "slurm" for r in run.submissions()) or any(
                a.slurm for t in range(run.num_tasks) for a in attempts(run, t)):
            raise
        log.debug("SLURM cannot be asked (%s); run %s has no SLURM job of its own", exc,
                  run.run_id)
        return [], []


@click.command("cancel")
@run_argument
def cancel_cmd(run_ref: str, root: str | None) -> None:
    """Cancel RUN's queued and running SLURM jobs."""
    from chatspace.runs.slurm_cli import SlurmUnavailable, cancel

    run = open_run(run_ref, root)
    try:
        jobs = [job for group in _jobs_of(run) for job in group]
        cancel(jobs)
    except SlurmUnavailable as exc:
        raise RunFailed(f"cannot cancel run {run.run_id}'s jobs: {exc}") from None
    click.echo(f"cancelled {len(jobs)} job(s) of run {run.run_id}: {', '.join(jobs)}" if jobs
               else f"run {run.run_id} has no queued or running jobs: nothing to cancel")


@click.group("run")
def run_group() -> None:
    """Entry points that executors and sbatch templates call."""


def _task_entry(run_ref: str, task: int, root: str | None) -> None:
    from chatspace.runs.task import run_task

    run_task(open_run(run_ref, root, task), task)


@run_group.command("task")
@click.argument("run_ref", metavar="RUN")
@click.option("--task", type=int, required=True, help="Task (slice) index.")
@root_option
def run_task_cmd(run_ref: str, task: int, root: str | None) -> None:
    """Run slice TASK of RUN, whatever its kind, and write its outputs (a no-op if done)."""
    _task_entry(run_ref, task, root)


@run_group.command("embed-task", hidden=True)
@click.argument("run_ref", metavar="RUN")
@click.option("--task", type=int, required=True, help="Task (slice) index.")
@root_option
def run_embed_task_cmd(run_ref: str, task: int, root: str | None) -> None:
    """Alias of `run task`, kept for runs and templates that call it."""
    _task_entry(run_ref, task, root)


@run_group.command("reduce")
@run_argument
def run_reduce_cmd(run_ref: str, root: str | None) -> None:
    """Check every task's outputs and write RUN's manifest; exit 1 naming bad tasks."""
    from chatspace.runs.reduce import reduce_run

    run = open_run(run_ref, root)
    reduce_run(run)
    click.echo(str(run.manifest_path))




COMMANDS = [plan_group, submit_group, resume, cancel_cmd, run_group]

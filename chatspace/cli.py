"""The `chatspace` command line. Exit codes: 0 success, 1 a run or task failed, 2 bad input."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import click

from chatspace.errors import BadInput, RunFailed
from chatspace.options import (
    SLURM_FLAGS,
    check_executor,
    embed_options,
    executor_options,
    json_option,
    open_run,
    overrides_from,
    resolve_root,
    root_option,
    run_argument,
    slurm_options,
    spec_from_cli,
)
from chatspace.runrecord import Run

log = logging.getLogger("chatspace")

def _emit(as_json: bool, data: dict[str, Any], lines: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        for line in lines:
            click.echo(line)


def _summary(run: Run) -> dict[str, Any]:
    manifest = run.manifest_path
    return {"run_id": run.run_id, "run_dir": str(run.dir),
            "manifest": str(manifest) if manifest.exists() else None}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """chatspace: plan, run and check SLURM batch jobs that embed datasets.

    \b
    chatspace submit embed jobs/demo.toml --executor local
    chatspace status RUN · chatspace verify RUN
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@cli.group()
def plan() -> None:
    """Plan a run: write its run record and sample, run nothing."""


@plan.command("embed")
@embed_options
@root_option
@click.option("--run-id", default=None, help="Run id (default: timestamp + random suffix).")
@json_option
def plan_embed_cmd(spec_file: str | None, root: str | None, run_id: str | None,
                   as_json: bool, **params: Any) -> None:
    """Plan an embedding run from SPEC_FILE (TOML) and/or flags; print the run directory,
    then the sbatch commands that run it with the templates in hpc/."""
    from chatspace.planner import plan_embed

    spec = spec_from_cli(spec_file, params)
    run, _ = plan_embed(spec, resolve_root(root), run_id)
    throttle = f"%{spec.slurm.array_parallelism}" if spec.slurm.array_parallelism else ""
    sbatch = [f"jid=$(sbatch --parsable --array=0-{run.num_tasks - 1}{throttle} "
              f"hpc/embed.sbatch {run.dir})",
              f"sbatch --dependency=afterok:$jid hpc/reduce.sbatch {run.dir}"]
    _emit(as_json, {**_summary(run), "sbatch": sbatch},
          [str(run.dir), "# run it with the sbatch templates, from the repository root:",
           *sbatch])


@cli.group()
def submit() -> None:
    """Plan a run and execute it (SLURM, local processes, or in-process)."""


@submit.command("embed")
@embed_options
@slurm_options
@root_option
@click.option("--run-id", default=None, help="Run id; an existing id with the same spec "
                                             "resumes that run.")
@executor_options
@json_option
def submit_embed_cmd(spec_file: str | None, root: str | None, run_id: str | None,
                     executor: str | None, parallelism: int | None, wait: bool, as_json: bool,
                     **params: Any) -> None:
    """Embed a dataset: plan it, run or submit every task, then the reduce (a manifest).

    With SLURM, one job array per MaxArraySize tasks and a reduce job (afterok) are submitted;
    `submit` returns at once unless --wait."""
    from chatspace.planner import plan_embed

    executor = check_executor(executor, parallelism)
    spec = spec_from_cli(spec_file, params)
    if executor == "slurm":
        from chatspace.slurm import check_slurm_options

        check_slurm_options(spec.slurm)
    run, new = plan_embed(spec, resolve_root(root), run_id)
    if not new:
        log.info("run %s exists with this spec: running its unfinished tasks", run.run_id)
    _launch(run, executor, spec.slurm, parallelism, wait, as_json)


def _launch(run: Run, executor: str, slurm: Any, parallelism: int | None, wait: bool,
            as_json: bool) -> None:
    from chatspace.executors import launch

    record = launch(run, executor, slurm=slurm, parallelism=parallelism, wait=wait,
                    progress=not as_json)
    summary = {**_summary(run), "executor": executor, "submission": record}
    if run.manifest_path.exists():
        lines = [f"run {run.run_id} done", f"run dir:  {run.dir}",
                 f"manifest: {run.manifest_path}"]
    else:
        arrays = ", ".join(f"{a['job_id']} ({len(a['tasks'])} tasks)" for a in record["arrays"])
        lines = [f"submitted run {run.run_id}: arrays {arrays or 'none'}, reduce job "
                 f"{record['reduce_job_id']}", f"run dir: {run.dir}",
                 f"watch:   chatspace status {run.dir}"]
    _emit(as_json, summary, lines)


@cli.command()
@click.argument("run_ref", metavar="RUN")
@slurm_options
@root_option
@executor_options
@click.option("--force", is_flag=True, help="Cancel the run's queued or running jobs first.")
@json_option
def resume(run_ref: str, root: str | None, executor: str | None, parallelism: int | None,
           wait: bool, force: bool, as_json: bool, **params: Any) -> None:
    """Rerun only RUN's tasks without a valid completion record (one compacted array on
    SLURM), then a new reduce. SLURM options default to the run's own."""
    import dataclasses

    from chatspace.config import build_section
    from chatspace.slurm import cancel, check_slurm_options, live_jobs

    run = open_run(run_ref, root)
    history = run.submissions()
    executor = check_executor(executor or (history[-1]["executor"] if history else None),
                              parallelism)
    slurm = run.spec.slurm
    changes = {k: v for k, v in overrides_from(params, SLURM_FLAGS)["slurm"].items()
               if v is not None}
    if changes:
        slurm = build_section(type(slurm), {**dataclasses.asdict(slurm), **changes}, "slurm")
    if executor == "slurm":
        check_slurm_options(slurm)
    live, stale = live_jobs(run) if history else ([], [])
    if live and not force:
        raise BadInput(f"run {run.run_id} still has queued or running jobs "
                       f"({', '.join(live)}): wait, or use --force to cancel them first")
    cancel(live + stale)
    _launch(run, executor, slurm, parallelism, wait, as_json)


@cli.command("cancel")
@run_argument
def cancel_cmd(run_ref: str, root: str | None) -> None:
    """Cancel RUN's queued and running SLURM jobs."""
    from chatspace.slurm import cancel, live_jobs

    run = open_run(run_ref, root)
    jobs = [job for group in live_jobs(run) for job in group]
    cancel(jobs)
    click.echo(f"cancelled {len(jobs)} job(s) of run {run.run_id}"
               + (f": {', '.join(jobs)}" if jobs else ""))


@cli.command()
@click.argument("run_ref", metavar="RUN")
@click.option("--task", type=int, required=True, help="Task index.")
@root_option
def logs(run_ref: str, task: int, root: str | None) -> None:
    """Print the stdout/stderr of TASK's latest attempt."""
    run = open_run(run_ref, root, task)
    found = run.task_logs(task)
    if not found:
        raise BadInput(f"task {task} of run {run.run_id} has no logs yet in {run.log_dir}")
    for path in found:
        click.echo(f"==> {path} <==")
        click.echo(path.read_text(errors="replace"), nl=False)


@cli.group("run")
def run_group() -> None:
    """Entry points that executors and sbatch templates call."""


@run_group.command("embed-task")
@click.argument("run_ref", metavar="RUN")
@click.option("--task", type=int, required=True, help="Task (slice) index.")
@root_option
def run_embed_task_cmd(run_ref: str, task: int, root: str | None) -> None:
    """Embed slice TASK of RUN and write its shard (a no-op if already complete)."""
    from chatspace.pipeline import run_embed_task

    run = open_run(run_ref, root, task)
    run_embed_task(run, task)


@run_group.command("reduce")
@run_argument
def run_reduce_cmd(run_ref: str, root: str | None) -> None:
    """Check every shard of RUN and write its manifest; exit 1 naming missing tasks."""
    from chatspace.reduce import reduce_run

    run = open_run(run_ref, root)
    reduce_run(run)
    click.echo(str(run.manifest_path))


@cli.command()
@run_argument
@json_option
def status(run_ref: str, root: str | None, as_json: bool) -> None:
    """Per-task states of RUN (a run id or run directory), rows done, failures and logs."""
    from chatspace.status import run_status

    run = open_run(run_ref, root)
    state = run_status(run)
    lines = [f"run {run.run_id}: {state['rows_done']}/{state['rows']} rows; "
             + ", ".join(f"{n} {s}" for s, n in state["counts"].items()),
             f"manifest: {state['manifest'] or '(not reduced yet)'}"]
    for task in state["tasks"]:
        if task["state"] != "done":
            slurm = task.get("slurm")
            job = f" [{slurm['state']} exit {slurm.get('exit_code') or '-'}]" if slurm else ""
            lines.append(f"  task {task['task']}: {task['state']}{job} "
                         f"({task['rows_done']}/{task['rows']} rows) log: {task['log']}")
            lines += [f"      {line}" for line in task.get("error", [])]
    if state["reduce"]:
        reduce = state["reduce"]
        lines.append(f"reduce: job {reduce['job_id']} {reduce.get('state', 'unknown')}"
                     + (f" ({reduce['reason']})" if reduce.get("reason") else ""))
    _emit(as_json, state, lines)


@cli.command()
@run_argument
@json_option
def verify(run_ref: str, root: str | None, as_json: bool) -> None:
    """Re-check every shard of RUN against its manifest (bytes, sha256, rows)."""
    from chatspace.reduce import verify_run

    run = open_run(run_ref, root)
    problems = verify_run(run)
    _emit(as_json, {**_summary(run), "ok": not problems, "problems": problems},
          problems or [f"run {run.run_id}: all {run.num_tasks} shards match the manifest"])
    if problems:
        sys.exit(1)


@cli.command("embed-hf")
@embed_options
@root_option
@click.option("--run-id", default=None)
@json_option
@click.pass_context
def embed_hf(ctx: click.Context, **params: Any) -> None:
    """Embed a dataset in this one process (the same run as `submit embed --array 1
    --executor debug`)."""
    params.update(array=1, executor="debug", parallelism=None)
    ctx.invoke(submit_embed_cmd, **params)


@cli.command("download-dataset")
@click.argument("name")
@click.option("--subset", default=None)
@click.option("--split", default=None)
@root_option
@json_option
def download_dataset(name: str, subset: str | None, split: str | None, root: str | None,
                     as_json: bool) -> None:
    """Record dataset NAME (HF cache or local files) under ROOT/datasets/raw/, as Parquet with
    its row counts and features."""
    from chatspace.download import record_dataset

    info = record_dataset(name, subset, split, resolve_root(root))
    _emit(as_json, info, [info["path"]])


def main() -> None:
    try:
        code = cli.main(prog_name="chatspace", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (BadInput, RunFailed) as exc:
        click.echo(f"chatspace: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)

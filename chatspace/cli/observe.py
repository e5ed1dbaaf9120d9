"""Commands that look at a run, however it was started: ``status`` (once, or ``--watch``),
``logs`` (any attempt of a task, or the reduce) and ``verify``."""

from __future__ import annotations

import sys

import click

from chatspace.cli.options import json_option, open_run, root_option, run_argument
from chatspace.cli.output import emit, run_summary
from chatspace.errors import BadInput
from chatspace.runs.record import Run
from chatspace.runs.status import STATES, RunStatus
from chatspace.text import printable


@click.command()
@click.argument("run_ref", metavar="RUN")
@click.option("--task", type=int, default=None, help="Task index.")
@click.option("--reduce", "of_reduce", is_flag=True, help="The reduce job's logs instead.")
@click.option("--attempt", type=int, default=None,
              help="Attempt K (1 = the first; default the latest), as `status` counts them.")
@click.option("--tail", type=int, default=None, help="Only the last N lines of each file.")
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing what the task writes until it is no longer running.")
@root_option
def logs(run_ref: str, task: int | None, of_reduce: bool, attempt: int | None,
         tail: int | None, follow: bool, root: str | None) -> None:
    """Print the stdout/stderr of TASK's latest attempt (or of attempt K, or of the reduce),
    however the run was started: submit, resume, local, or the sbatch templates by hand."""
    from chatspace.runs.attempts import attempts, log_spans

    if (task is None) == (not of_reduce):
        raise BadInput("give exactly one of --task I and --reduce")
    if tail is not None and tail < 0:
        raise BadInput(f"--tail must be >= 0, got {tail}")
    run = open_run(run_ref, root, task)
    target = None if of_reduce else task
    what = "the reduce" if of_reduce else f"task {task}"
    history = attempts(run, target)
    if attempt is not None and not 1 <= attempt <= len(history):
        raise BadInput(f"--attempt {attempt}: {what} of run {run.run_id} has "
                       f"{len(history)} recorded attempt(s)")
    found = log_spans(run, target, attempt, history=history)
    if not found:
        raise BadInput(f"{what} of run {run.run_id} has no logs yet in {run.log_dir} (local "
                       "and debug runs reduce in the submitting process)")
    for span in found:
        click.echo(f"==> {printable(str(span.path))} <==")
        lines = span.read().splitlines(keepends=True)
        click.echo("".join(lines[-tail:] if tail else [] if tail == 0 else lines), nl=False)
    if follow and not of_reduce and found[-1].stop is None:
        _follow_logs(run, task, {s.path: s.path.stat().st_size for s in found})


def _follow_logs(run: Run, task: int, offsets: dict) -> None:
    """Print what is appended to the task's logs until its job has left the queue."""
    import time

    from chatspace.runs.status import run_status
    from chatspace.runs.watch import STILL_RUNNING

    while True:
        for path in offsets:
            with open(path, "rb") as fh:
                fh.seek(offsets[path])
                more = fh.read()
            offsets[path] += len(more)
            if more:
                click.echo(more.decode(errors="replace"), nl=False)
        if run_status(run).tasks[task].state not in STILL_RUNNING:
            return
        time.sleep(2)


def _status_lines(state: RunStatus, wanted: set[str]) -> list[str]:
    rate = (f"; {state.rows_per_second:,.1f} rows/s, ETA {state.eta_seconds} s"
            if state.rows_per_second and state.eta_seconds else "")
    manifest = state.manifest or ("(stale: tasks changed since the last reduce)"
                                  if state.manifest_stale else "(not reduced yet)")
    lines = [f"run {state.run_id} ({state.kind}): {state.rows_done}/{state.rows} rows; "
             + ", ".join(f"{n} {s}" for s, n in state.counts.items()) + rate,
             f"manifest: {manifest}"]
    if state.note:
        lines.append(state.note.line)
    if state.slurm_error:
        lines.append(f"SLURM cannot be asked ({state.slurm_error}): job states unknown")
    for task in state.tasks:
        if task.state != "done" or wanted:
            job = f" [{task.slurm.state} exit {task.slurm.exit_code or '-'}]" if task.slurm else ""
            ran = (f", attempt {task.attempts} on {task.node}"
                   + (f" for {task.elapsed_seconds:.0f} s"
                      if task.elapsed_seconds is not None else "")
                   if task.attempts else "")
            lines.append(f"  task {task.task}: {task.state}{job} "
                         f"({task.rows_done}/{task.rows} rows{ran}) log: {task.log}")
            lines += [f"      {line}" for line in task.error or []]
    if state.reduce:
        reduce = state.reduce
        lines.append(f"reduce: job {reduce.job_id} {state.reduce_state or 'unknown'}"
                     + (f" ({reduce.job.reason})" if reduce.job and reduce.job.reason else "")
                     + (f" log: {reduce.log}" if reduce.log else ""))
    return lines


@click.command()
@run_argument
@click.option("--failed", is_flag=True, help="Only tasks that failed or lost their outputs.")
@click.option("--state", "states", multiple=True, type=click.Choice(STATES),
              help="Only tasks in this state (repeatable).")
@click.option("--watch", is_flag=True,
              help="Print the status again whenever it changes, polling with backoff (a few "
                   "seconds growing to a minute), until no task is left to run.")
@click.option("--verify", "check_hash", is_flag=True,
              help="Also re-read every output of a done task against its sha256 (slow on "
                   "large runs); without it a same-size change goes unseen.")
@json_option
def status(run_ref: str, root: str | None, failed: bool, states: tuple[str, ...], watch: bool,
           check_hash: bool, as_json: bool) -> None:
    """Per-task states of RUN (a run id or run directory): rows done, attempts, node, elapsed,
    logs; rows/s and ETA; the reduce job; the manifest once it is current. A done task whose
    outputs are gone or changed size (any change, with --verify) shows as lost."""
    import time
    from dataclasses import replace

    from chatspace.runs.slurm_cli import SLURM_LIVE_STATES
    from chatspace.runs.status import run_status
    from chatspace.runs.watch import POLL_FIRST, STILL_RUNNING, next_poll, progress_key

    run = open_run(run_ref, root)
    wanted = set(states) | ({"failed", "lost"} if failed else set())
    delay, seen = POLL_FIRST, None
    while True:
        state = run_status(run, verify=check_hash)
        if wanted:
            state = replace(state, tasks=[t for t in state.tasks if t.state in wanted])
        now = progress_key(state)
        if now != seen:
            emit(as_json, state.as_json(), _status_lines(state, wanted))
        reduce_live = state.reduce_state in SLURM_LIVE_STATES
        if not watch or not (reduce_live or any(s in STILL_RUNNING for s in state.counts)):
            return
        delay, seen = next_poll(delay, now != seen), now
        time.sleep(delay)


@click.command()
@run_argument
@json_option
def verify(run_ref: str, root: str | None, as_json: bool) -> None:
    """Re-check every output file of RUN against its manifest (bytes, sha256, rows)."""
    from chatspace.runs.reduce import verify_run

    run = open_run(run_ref, root)
    problems = verify_run(run)
    emit(as_json, {**run_summary(run), "ok": not problems, "problems": problems},
         problems or [f"run {run.run_id}: all outputs of {run.num_tasks} tasks match the "
                      "manifest"])
    if problems:
        sys.exit(1)


COMMANDS = [status, logs, verify]

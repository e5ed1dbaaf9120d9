"""SLURM's own commands: run them with a timeout and turn a missing, hanging or failing command
into one line (`SlurmUnavailable`), and read what they say about a run's jobs.

Callers decide what that line means: bad input before anything is submitted (exit 2), a
failure after (exit 1), or "SLURM cannot be asked" in `status`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from chatspace.runs.attempts import reduce_job, task_jobs
from chatspace.runs.record import Run
from chatspace.runs.typed_records import Item

log = logging.getLogger(__name__)

# How long a SLURM command may take before it counts as hanging.
TIMEOUT_SECONDS = float(os.environ.get("CHATSPACE_SLURM_TIMEOUT", "30"))
SLURM_LIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING",
                     "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}
REQUEUED_STATES = {"PREEMPTED", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"}
FINISHED_BAD = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
                "DEADLINE"}


@dataclass(frozen=True)
class JobState(Item):
    """What SLURM says of one job: its state, exit code ("" while it runs), and where the
    command that was asked tells them, why it waits (squeue) and when it ended (sacct);
    `to_dict` leaves out the two it did not tell."""

    OMIT_NONE = True

    state: str
    exit_code: str = ""
    reason: str | None = None
    end: str | None = None


class SlurmUnavailable(Exception):
    """A SLURM command is missing, did not answer in time, or failed (one-line message)."""


def slurm_command(args: list[str], timeout: float = TIMEOUT_SECONDS) -> str:
    """The stdout of a SLURM command, or SlurmUnavailable saying in one line what went wrong."""
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise SlurmUnavailable(f"{args[0]} is not on PATH") from None
    except subprocess.TimeoutExpired:
        raise SlurmUnavailable(f"`{' '.join(args[:2])}` did not answer within "
                               f"{timeout:.0f} s") from None
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines() or [f"exit status {out.returncode}"]
        raise SlurmUnavailable(f"`{' '.join(args[:2])}` failed: {lines[0].strip()}")
    return out.stdout


def cluster_config() -> dict[str, str]:
    """`scontrol show config` as a dict."""
    text = slurm_command(["scontrol", "show", "config"])
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def partitions() -> list[str]:
    return [p.rstrip("*") for p in slurm_command(["sinfo", "-h", "-o", "%P"]).split()]


def _expand(job_id: str) -> list[str]:
    """``12_[0-3,7%2]`` -> ``12_0 … 12_3, 12_7``; other ids unchanged."""
    match = re.match(r"^(\d+)_\[([^\]]+)\]$", job_id)
    if not match:
        return [job_id]
    out = []
    for part in match.group(2).split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        out += [f"{match.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def parse_sacct(text: str) -> dict[str, JobState]:
    """`sacct -n -P -X -o JobID,State,ExitCode,End` lines -> {job id: its state, exit code and
    end}."""
    states = {}
    for line in text.splitlines():
        job, state, code, end = (line.split("|") + ["", "", ""])[:4]
        for one in _expand(job):
            states[one] = JobState(state.split()[0] if state else "UNKNOWN", code, end=end)
    return states


def parse_scontrol(text: str, job: str) -> dict[str, JobState]:
    """`scontrol -o show job` lines -> {job id: its state and exit code}."""
    states = {}
    for line in text.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        task = fields.get("ArrayTaskId")
        name = (f"{fields['ArrayJobId']}_{task}" if task and task.isdigit()
                else fields.get("JobId", job))
        states[name] = JobState(fields.get("JobState", "UNKNOWN"), fields.get("ExitCode", ""))
    return states


def parse_squeue(text: str) -> dict[str, JobState]:
    """`squeue -h -r -o %i|%T|%r` lines -> {job id: its state and pending reason}."""
    states = {}
    for line in text.splitlines():
        job, state, reason = (line.split("|") + ["", ""])[:3]
        states[job] = JobState(state, reason=reason)
    return states


def job_states(job_ids: list[str]) -> dict[str, JobState]:
    """Current state of each job id: sacct when accounting works, else scontrol; then squeue
    (authoritative for queued and running jobs). Never waits on a job; SlurmUnavailable when
    the controller cannot be asked."""
    base = sorted({j.split("_")[0] for j in job_ids})
    if not base:
        return {}
    try:
        states = parse_sacct(slurm_command(["sacct", "-n", "-P", "-X", "-j", ",".join(base),
                                            "-o", "JobID,State,ExitCode,End"]))
    except SlurmUnavailable as exc:
        log.debug("sacct unavailable (%s): using scontrol for finished jobs", exc)
        states = {}
        for job in base:
            try:
                states.update(parse_scontrol(slurm_command(["scontrol", "-o", "show", "job",
                                                            job]), job))
            except SlurmUnavailable as missing:
                if "Invalid job id" not in str(missing):  # forgotten by the controller
                    raise
    states.update(parse_squeue(slurm_command(["squeue", "-h", "-r", "-j", ",".join(base),
                                              "-o", "%i|%T|%r"])))
    return states


def run_comment(run: Run, offset: int | None) -> str:
    """The ``--comment`` that tags a job queued with the sbatch lines `plan` prints as one of
    `run`'s: its task array starting at task `offset`, or (None) its reduce."""
    return f"chatspace:{run.dir}:" + ("reduce" if offset is None else f"offset={offset}")


def queued_jobs(run: Run) -> tuple[dict[int, str], list[str], dict[str, JobState]]:
    """This user's queued or running jobs tagged as `run`'s (see `run_comment`), found before
    any of them has started: task -> job id, the reduce job ids, and their states. Not asked
    where SLURM is not installed, nor for a run whose latest submission ran locally."""
    history = run.submissions()
    if (history[-1].executor if history else "slurm") != "slurm" or \
            shutil.which("squeue") is None:
        return {}, [], {}
    tasks: dict[int, str] = {}
    reduces = []
    states = {}
    prefix = f"chatspace:{run.dir}:"
    out = slurm_command(["squeue", "--me", "-h", "-r", "-o", "%i|%T|%r|%k"])
    for line in out.splitlines():
        job, state, reason, comment = (line.strip().split("|", 3) + ["", "", ""])[:4]
        what = comment.removeprefix(prefix)
        if what == comment:
            continue
        states[job] = JobState(state, reason=reason)
        if what == "reduce":
            reduces.append(job)
        elif what.startswith("offset=") and "_" in job:
            tasks[int(what[len("offset="):]) + int(job.split("_")[1])] = job
    return tasks, reduces, states


def live_jobs(run: Run) -> tuple[list[str], list[str]]:
    """The run's queued or running jobs, and apart from them its reduce jobs that wait on a
    dependency that can no longer be satisfied (a task failed): those only need cancelling.
    Jobs come from the submission and attempt records and from the queue (`queued_jobs`)."""
    tasks, reduces, _ = queued_jobs(run)
    ids = [*task_jobs(run).values(), *tasks.values(), *reduces]
    ids += [r.reduce_job_id for r in run.submissions() if r.reduce_job_id]
    ids += [job for job in [reduce_job(run)] if job]
    live, stale = [], []
    for job, state in job_states(ids).items():
        if job in ids and state.state in SLURM_LIVE_STATES and job not in live + stale:
            never = state.reason == "DependencyNeverSatisfied"
            (stale if never else live).append(job)
    return live, stale


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        slurm_command(["scancel", *job_ids])


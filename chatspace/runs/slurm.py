"""The SLURM executor: one job array per MaxArraySize tasks through submitit, then a reduce
job with ``afterok`` on every array; plus the queries `status`, `resume` and `cancel` use.

Jobs call the same task and reduce entry points as `chatspace run …` (what the sbatch
templates run), in-process inside submitit's job wrapper, optionally inside the Apptainer image.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import subprocess
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import submitit

from chatspace.errors import BadInput
from chatspace.runs.job import JobType
from chatspace.runs.record import Run
from chatspace.runs.reduce import reduce_run
from chatspace.runs.task import run_task
from chatspace.specs import SlurmConfig

log = logging.getLogger(__name__)

DEFAULT_TIME_MINUTES = 60
LIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING",
               "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}
FINISHED_BAD = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
                "BOOT_FAIL", "DEADLINE"}
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


def _scontrol_config() -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                         timeout=30)
    if out.returncode != 0:
        raise BadInput(f"cannot reach the SLURM controller: {out.stderr.strip()}")
    pairs = (line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def max_array_size() -> int:
    return int(_scontrol_config().get("MaxArraySize", "1001"))


def check_slurm_options(cfg: SlurmConfig) -> None:
    """Validate SLURM options against the cluster before anything is planned or submitted."""
    if shutil.which("sbatch") is None:
        raise BadInput("sbatch is not on PATH: use --executor local (or debug) to run here")
    if cfg.time is not None:
        parse_time(cfg.time)
    for name in ("array_parallelism", "cpus_per_task", "gpus_per_task"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise BadInput(f"slurm.{name} must be >= 1, got {value}")
    if cfg.container is not None and not Path(cfg.container).is_file():
        raise BadInput(f"container image not found: {cfg.container}")
    for arg in cfg.sbatch_args:
        if not arg.startswith("--") or "=" not in arg:
            raise BadInput(f"--sbatch-arg {arg!r} must look like --key=value")
    if cfg.partition is not None:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True,
                             timeout=30)
        partitions = [p.rstrip("*") for p in out.stdout.split()]
        if cfg.partition not in partitions:
            raise BadInput(f"slurm.partition (--partition) {cfg.partition!r} does not exist "
                           f"(partitions: {', '.join(partitions) or 'none'})")


CONTAINER_SH = Path(__file__).parent.parent / "container.sh"


def container_python(image: str, root: Path) -> str:
    """The command submitit runs instead of `python` when tasks run inside the image: the
    same wrapper (container.sh) the sbatch templates use, so one place builds the
    `apptainer exec` line."""
    return shlex.join(["env", f"CHATSPACE_IMAGE={Path(image).resolve()}",
                       f"CHATSPACE_ROOT={root}", str(CONTAINER_SH), "python"])


def _open(run_dir: str, job: JobType) -> Run:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                                                   "%(message)s")
    return Run.open(run_dir, Path(run_dir).parent.parent, {job.kind: job})


class TaskJob(submitit.helpers.Checkpointable):
    """An array element: the same entry point as `chatspace run task RUN --task I`, called
    with the run's job type (pickled by submitit) instead of through the CLI. On SLURM's
    pre-timeout or preemption signal submitit requeues it, and the task resumes from its
    committed parts."""

    def __init__(self, job: JobType):
        self.job = job

    def __call__(self, run_dir: str, task: int) -> None:
        run_task(_open(run_dir, self.job), task)


class ReduceJob:
    """The reduce: the same entry point as `chatspace run reduce RUN`."""

    def __init__(self, job: JobType):
        self.job = job

    def __call__(self, run_dir: str) -> None:
        reduce_run(_open(run_dir, self.job))


def submitit_parameters(cfg: SlurmConfig, name: str) -> dict[str, Any]:
    params: dict[str, Any] = {
        "job_name": cfg.job_name or f"chatspace-{name}",
        "time": parse_time(cfg.time) if cfg.time else DEFAULT_TIME_MINUTES,
        "signal_delay_s": 120,
        "additional_parameters": {"requeue": True,
                                  **{a[2:].split("=", 1)[0]: a.split("=", 1)[1]
                                     for a in cfg.sbatch_args}},
    }
    for key in ("partition", "account", "qos", "mem", "cpus_per_task", "gpus_per_task",
                "constraint", "exclude", "array_parallelism"):
        value = getattr(cfg, key)
        if value is not None:
            params[key] = value
    return params


def _executor(cfg: SlurmConfig, run: Run) -> submitit.SlurmExecutor:
    python = container_python(cfg.container, run.root) if cfg.container else None
    return submitit.SlurmExecutor(folder=run.log_dir, python=python)


def submit(run: Run, tasks: list[int], cfg: SlurmConfig) -> dict[str, Any]:
    """Submit `tasks` as arrays (split at MaxArraySize) and a reduce job depending on them;
    append the submission to the run record and return it."""
    limit = max_array_size()
    executor = _executor(cfg, run)
    kind = run.plan["kind"]
    task_params = submitit_parameters(cfg, kind)
    arrays = []
    for start in range(0, len(tasks), limit):
        chunk = tasks[start : start + limit]
        executor.update_parameters(**task_params)
        with executor.batch():
            jobs = [executor.submit(TaskJob(run.job), str(run.dir), task) for task in chunk]
        arrays.append({"job_id": jobs[0].job_id.split("_")[0], "tasks": chunk,
                       "jobs": [job.job_id for job in jobs]})  # a 1-task "array" is a job
        log.info("submitted array %s: %d tasks", arrays[-1]["job_id"], len(chunk))
    reduce_params = submitit_parameters(cfg, f"{kind}-reduce")
    reduce_params.pop("array_parallelism", None)
    reduce_params.pop("gpus_per_task", None)
    if arrays:
        reduce_params["dependency"] = "afterok:" + ":".join(a["job_id"] for a in arrays)
    executor.update_parameters(**reduce_params)
    reduce_job = executor.submit(ReduceJob(run.job), str(run.dir))
    record = {
        "executor": "slurm",
        "submitted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "arrays": arrays,
        "reduce_job_id": reduce_job.job_id,
        "sbatch_parameters": task_params,
        "reduce_sbatch_parameters": reduce_params,
        "sbatch_scripts": [str(run.log_dir / f"{job}_submission.sh")
                           for job in [a["job_id"] for a in arrays] + [reduce_job.job_id]],
        "python": executor.python,
        "slurm_config": asdict(cfg),
    }
    run.save_submission(record)
    return record


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


def _sacct(base: list[str]) -> dict[str, dict[str, str]] | None:
    """Finished and live jobs from accounting; None when accounting does not answer."""
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", ",".join(base), "-o",
                          "JobID,State,ExitCode"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        return None
    states = {}
    for line in out.stdout.splitlines():
        job, state, code = (line.split("|") + ["", ""])[:3]
        for one in _expand(job):
            states[one] = {"state": state.split()[0] if state else "UNKNOWN", "exit_code": code}
    return states


def _scontrol(base: list[str]) -> dict[str, dict[str, str]]:
    """Jobs the controller still remembers (MinJobAge), for clusters without accounting."""
    states = {}
    for job in base:
        out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True,
                             text=True, timeout=30)
        for line in out.stdout.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            task = fields.get("ArrayTaskId")
            name = f"{fields['ArrayJobId']}_{task}" if task and task.isdigit() else \
                fields.get("JobId", job)
            states[name] = {"state": fields.get("JobState", "UNKNOWN"),
                            "exit_code": fields.get("ExitCode", "")}
    return states


def job_states(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """Current state of each job id: sacct when accounting works, else scontrol; then squeue
    (authoritative for queued and running jobs). Never waits on a job."""
    base = sorted({j.split("_")[0] for j in job_ids})
    if not base:
        return {}
    states = _sacct(base)
    if states is None:
        log.debug("sacct unavailable: using scontrol for finished jobs")
        states = _scontrol(base)
    queue = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(base), "-o", "%i|%T|%r"],
                           capture_output=True, text=True, timeout=30)
    for line in queue.stdout.splitlines():
        job, state, reason = (line.split("|") + ["", ""])[:3]
        states[job] = {"state": state, "exit_code": "", "reason": reason}
    return states


def live_jobs(run: Run) -> tuple[list[str], list[str]]:
    """The run's queued or running jobs, and apart from them its reduce jobs that wait on a
    dependency that can no longer be satisfied (a task failed): those only need cancelling."""
    ids = list(run.task_jobs().values())
    ids += [r["reduce_job_id"] for r in run.submissions() if r.get("reduce_job_id")]
    live, stale = [], []
    for job, state in job_states(ids).items():
        if job in ids and state["state"] in LIVE_STATES:
            never = state.get("reason") == "DependencyNeverSatisfied"
            (stale if never else live).append(job)
    return live, stale


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], check=False, capture_output=True, timeout=30)


class SlurmExecutor:
    name = "slurm"

    def __init__(self, cfg: SlurmConfig):
        self.cfg = cfg

    def execute(self, run: Run, tasks: list[int]) -> dict[str, Any]:
        return submit(run, list(tasks), self.cfg)

"""The SLURM executor: one job array per MaxArraySize tasks through submitit, then a reduce
job with ``afterok`` on every array; plus the queries `status`, `resume` and `cancel` use.

Jobs call the same task and reduce entry points as `chatspace run …` (what the sbatch
templates run), in-process inside submitit's job wrapper, optionally inside the Apptainer image.
"""

from __future__ import annotations

import logging
import shlex
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import submitit

from chatspace.errors import BadInput, RunFailed
from chatspace.runs.executor import Executor, tasks_at_once
from chatspace.runs.formats import Submission
from chatspace.runs.kind import Kind
from chatspace.runs.record import Run
from chatspace.runs.reduce import reduce_run
from chatspace.runs.slurm_cli import SlurmUnavailable, cluster_config, partitions, run_comment
from chatspace.runs.task import run_task
from chatspace.specs import SlurmConfig, parse_time

log = logging.getLogger(__name__)

DEFAULT_TIME_MINUTES = 60
def check_slurm_options(cfg: SlurmConfig) -> int:
    """Validate SLURM options against the cluster before anything is planned or submitted (what
    needs no cluster, `SlurmConfig.validate` checked with the spec); return the cluster's
    MaxArraySize. Every cluster query submission needs happens here, so
    an unreachable controller is exit 2 with nothing written."""
    if shutil.which("sbatch") is None:
        raise BadInput("sbatch is not on PATH: use --executor local (or debug) to run here")
    if cfg.container is not None and not Path(cfg.container).is_file():
        raise BadInput(f"container image not found: {cfg.container}")
    try:
        limit = int(cluster_config().get("MaxArraySize", "1001"))
        wanted = {"slurm.partition (--partition)": cfg.partition,
                  "slurm.reduce.partition (--reduce-partition)": cfg.reduce.partition}
        if any(wanted.values()):
            known = partitions()
            for where, name in wanted.items():
                if name is not None and name not in known:
                    raise BadInput(f"{where} {name!r} does not exist "
                                   f"(partitions: {', '.join(known) or 'none'})")
    except SlurmUnavailable as exc:
        raise BadInput(f"cannot ask the SLURM controller: {exc}") from None
    return limit


CONTAINER_SH = Path(__file__).parent.parent / "container.sh"


def container_python(image: str, root: Path) -> str:
    """The command submitit runs instead of `python` when tasks run inside the image: the
    same wrapper (container.sh) the sbatch templates use, so one place builds the
    `apptainer exec` line."""
    return shlex.join(["env", f"CHATSPACE_IMAGE={Path(image).resolve()}",
                       f"CHATSPACE_ROOT={root}", str(CONTAINER_SH), "python"])


def _open(run_dir: str, kind: Kind) -> Run:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                                                   "%(message)s")
    return Run.open(run_dir, Path(run_dir).parent.parent, {kind.name: kind})


class TaskJob(submitit.helpers.Checkpointable):
    """An array element: the same entry point as `chatspace run task RUN --task I`, called
    with the run's kind (pickled by submitit) instead of through the CLI. On SLURM's
    pre-timeout or preemption signal submitit requeues it, and the task resumes from its
    committed parts."""

    def __init__(self, kind: Kind):
        self.kind = kind

    def __call__(self, run_dir: str, task: int) -> None:
        run_task(_open(run_dir, self.kind), task)


class ReduceJob:
    """The reduce: the same entry point as `chatspace run reduce RUN`."""

    def __init__(self, kind: Kind):
        self.kind = kind

    def __call__(self, run_dir: str) -> None:
        reduce_run(_open(run_dir, self.kind))


def task_parameters(cfg: SlurmConfig, kind: str, tasks: int) -> dict[str, Any]:
    """submitit parameters of a task array. The throttle is always explicit: submitit would
    otherwise apply its own default of 256 silently. Requeued attempts append to the logs."""
    params: dict[str, Any] = {
        "job_name": cfg.job_name or f"chatspace-{kind}",
        "time": parse_time(cfg.time) if cfg.time else DEFAULT_TIME_MINUTES,
        "signal_delay_s": 120,
        "array_parallelism": cfg.array_parallelism or max(tasks, 1),
        # a requeued attempt appends to its log instead of truncating the earlier attempts'
        "additional_parameters": {"requeue": True, "open-mode": "append",
                                  **{a[2:].split("=", 1)[0]: a.split("=", 1)[1]
                                     for a in cfg.sbatch_args}},
    }
    for key in ("partition", "account", "qos", "mem", "cpus_per_task", "gpus_per_task",
                "constraint", "exclude"):
        value = getattr(cfg, key)
        if value is not None:
            params[key] = value
    return params


def reduce_parameters(cfg: SlurmConfig, kind: str, arrays: list[str]) -> dict[str, Any]:
    """The reduce job's own small CPU resources ([slurm.reduce]); account and qos are the
    tasks'. It runs after every array succeeded."""
    params: dict[str, Any] = {
        "job_name": f"{cfg.job_name or f'chatspace-{kind}'}-reduce",
        "time": parse_time(cfg.reduce.time), "mem": cfg.reduce.mem,
        "cpus_per_task": cfg.reduce.cpus,
    }
    for key, value in (("partition", cfg.reduce.partition), ("account", cfg.account),
                       ("qos", cfg.qos)):
        if value is not None:
            params[key] = value
    if arrays:
        params["dependency"] = "afterok:" + ":".join(arrays)
    return params


def sbatch_flags(params: dict[str, Any]) -> list[str]:
    """submitit parameters (as `task_parameters` / `reduce_parameters` make them) as the sbatch
    flags the templates in hpc/ take: one source for both ways of submitting."""
    flags = []
    for key, value in params.items():
        if key == "additional_parameters":
            flags += [f"--{k}" if v is True else f"--{k}={v}" for k, v in value.items()]
        elif key == "signal_delay_s":
            flags.append(f"--signal=B:USR2@{value}")
        elif key != "array_parallelism":
            flags.append(f"--{key.replace('_', '-')}={value}")
    return flags


def sbatch_lines(run: Run, max_array: int) -> list[str]:
    """Shell lines that run `run` with the sbatch templates, carrying its [slurm] resources:
    one array per `max_array` tasks (the template adds the offset to the array index), logs
    in the run's logs/, then the reduce with afterok on every array. Each job carries a
    comment that tags it as the run's, so `status`, `cancel` and `resume` find it in the queue
    before it starts."""
    cfg, tasks = run.spec.slurm, run.num_tasks
    params = task_parameters(cfg, run.plan.kind, min(tasks, max_array))
    env = (f"CHATSPACE_IMAGE={shlex.quote(str(Path(cfg.container).resolve()))} "
           f"CHATSPACE_ROOT={shlex.quote(str(run.root))} " if cfg.container else "")
    logs = run.log_dir
    common = [f"--output={logs}/task-%A_%a.out", f"--error={logs}/task-%A_%a.err",
              *sbatch_flags(params)]
    lines, names = [f"mkdir -p {shlex.quote(str(logs))}"], []
    for number, offset in enumerate(range(0, tasks, max_array)):
        last = min(tasks, offset + max_array) - offset - 1
        names.append(f"a{number}")
        args = [f"--array=0-{last}%{params['array_parallelism']}", *common,
                f"--comment={run_comment(run, offset)}", "hpc/task.sbatch", str(run.dir),
                str(offset)]
        lines.append(f"a{number}=$({env}sbatch --parsable {shlex.join(args)})")
    reduce = reduce_parameters(cfg, run.plan.kind, [])
    after = ":".join(f"${name}" for name in names)
    args = [f"--output={logs}/reduce-%j.out", f"--error={logs}/reduce-%j.err",
            *sbatch_flags(reduce), f"--comment={run_comment(run, None)}", "hpc/reduce.sbatch",
            str(run.dir)]
    lines.append(f"{env}sbatch --parsable --dependency=afterok:{after} {shlex.join(args)}")
    return lines


def _executor(cfg: SlurmConfig, run: Run) -> submitit.SlurmExecutor:
    python = container_python(cfg.container, run.root) if cfg.container else None
    return submitit.SlurmExecutor(folder=run.log_dir, python=python)


def submit(run: Run, tasks: list[int], cfg: SlurmConfig, max_array: int) -> dict[str, Any]:
    """Submit `tasks` as arrays (split at `max_array`) and a reduce job depending on them.
    The submission record is saved after every sbatch, so jobs already queued stay visible
    to status, cancel and resume if a later sbatch fails (RunFailed says so)."""
    executor = _executor(cfg, run)
    kind = run.plan.kind
    params = task_parameters(cfg, kind, min(len(tasks), max_array))  # every array's
    record: dict[str, Any] = {
        "executor": "slurm",
        "submitted_at": datetime.now(UTC).isoformat(timespec="microseconds"),
        "tasks_at_once": tasks_at_once(cfg.array_parallelism, len(tasks)),
        "arrays": [], "reduce_job_id": None, "sbatch_scripts": [],
        "sbatch_parameters": params,
        "python": executor.python, "slurm_config": cfg.model_dump(),
    }
    run.save_submission(record)
    try:
        executor.update_parameters(**params)
        for start in range(0, len(tasks), max_array):
            chunk = tasks[start : start + max_array]
            with executor.batch():
                jobs = [executor.submit(TaskJob(run.kind), str(run.dir), task) for task in chunk]
            array = jobs[0].job_id.split("_")[0]  # a 1-task "array" is a plain job
            record["arrays"].append({"job_id": array, "tasks": chunk,
                                     "jobs": [job.job_id for job in jobs]})
            record["sbatch_scripts"].append(str(run.log_dir / f"{array}_submission.sh"))
            run.save_submission(record, replace_last=True)
            log.info("submitted array %s: %d tasks", array, len(chunk))
        reduce_params = reduce_parameters(cfg, kind, [a["job_id"] for a in record["arrays"]])
        record["reduce_sbatch_parameters"] = reduce_params
        executor.update_parameters(**reduce_params)
        reduce_job = executor.submit(ReduceJob(run.kind), str(run.dir))
    except Exception as exc:  # noqa: BLE001 - sbatch's errors come in many types
        last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]  # sbatch's reason
        record["error"] = last
        run.save_submission(record, replace_last=True)
        queued = ", ".join(a["job_id"] for a in record["arrays"]) or "none"
        raise RunFailed(f"submission of run {run.run_id} stopped: {last}; arrays already "
                        f"queued: {queued} (see `chatspace status`, `chatspace cancel` or "
                        f"`chatspace resume` {run.run_id})") from None
    record["reduce_job_id"] = reduce_job.job_id
    record["sbatch_scripts"].append(str(run.log_dir / f"{reduce_job.job_id}_submission.sh"))
    run.save_submission(record, replace_last=True)
    return record


class SlurmExecutor(Executor):
    name = "slurm"

    def __init__(self, cfg: SlurmConfig, max_array: int):
        self.cfg, self.max_array = cfg, max_array

    def parallelism(self, run: Run) -> int:
        return tasks_at_once(self.cfg.array_parallelism, run.num_tasks)

    def submit(self, run: Run, tasks: Sequence[int]) -> Submission:
        return Submission.parse(submit(run, list(tasks), self.cfg, self.max_array))

"""One execution of a task at a time: a lease on ``{run}/leases/task-NNNNN.lock``.

`run_task` holds the lease of its task for as long as it runs, whichever executor started it
(submitit, an sbatch template, a local process, this process). The lease is a POSIX record lock
(`fcntl.lockf`) on the lock file, which the kernel (or the NFS lock manager) releases when the
holding process dies, however it dies: a lease is never stale, and nothing has to clean it up.
A POSIX lock belongs to its process alone (children do not inherit it), so an engine process
that outlives a killed task does not keep the task leased. The file also names its holder
(host, pid, start, SLURM job) for messages; its contents say nothing about whether it is held.

Caveat: POSIX locks drop when the process closes *any* descriptor of the file, so this module
keeps one descriptor per held lease and answers `holder` for its own process from memory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from chatspace.errors import BadInput, RunFailed
from chatspace.names import check_no_link
from chatspace.runs.formats import Lease
from chatspace.runs.record import Run
from chatspace.runs.slurm_env import SlurmJobEnvironment
from chatspace.runs.typed_records import UnreadableRecord

_HELD: dict[Path, Lease] = {}  # lock file -> this process's holder record


class TaskBusy(RunFailed):
    """Another live process holds the task's lease. `run task` exits with EX_TEMPFAIL (75):
    the local executor then waits for that process and runs the task only if it is still not
    done."""

    exit_code = 75


def lease_path(run: Run, task: int) -> Path:
    return Lease.path_in(run.root, run_id=run.run_id, task=task)


def describe(owner: Lease | None) -> str:
    if owner is None:
        return "a process its lease file does not name"
    job = f", SLURM job {owner.slurm_job}" if owner.slurm_job else ""
    return f"pid {owner.pid} on {owner.host} since {owner.since}{job}"


def _read_owner(fd: int) -> Lease | None:
    """The holder its lease file names; None for a file torn while it is being written (or
    not of chatspace's)."""
    try:
        return Lease.parse(json.loads(os.pread(fd, 4096, 0) or b"{}"))
    except (OSError, ValueError, TypeError, UnreadableRecord):
        return None


@contextlib.contextmanager
def holding(run: Run, task: int) -> Iterator[Lease]:
    """Hold the lease of `task` for the block; TaskBusy naming the holder if a live process
    holds it."""
    path = lease_path(run, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path in _HELD:
        raise TaskBusy(f"task {task} of run {run.run_id} is already running in this process")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link: said as every other planted link is
            check_no_link(run.root, path, f"run {run.run_id}")
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadInput(f"run {run.run_id}: {path} is not a regular file")
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        owner = _read_owner(fd)
        os.close(fd)
        if exc.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        raise TaskBusy(f"task {task} of run {run.run_id} is already running ({describe(owner)})"
                       "; wait for it, or stop it first") from None
    owner = Lease(host=socket.gethostname(), pid=os.getpid(),
                  since=datetime.now(UTC).isoformat(timespec="seconds"),
                  slurm_job=job.job_id if (job := SlurmJobEnvironment.current()) else None)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(owner.to_dict()).encode(), 0)
    _HELD[path] = owner
    try:
        yield owner
    finally:
        del _HELD[path]
        os.close(fd)  # releases the lock


def holder(run: Run, task: int) -> Lease | None:
    """Who holds the lease of `task` now, or None when nobody does (a held lease whose file
    does not parse is an unnamed holder: `Lease(host="?", pid=0, since="?")`)."""
    path = lease_path(run, task)
    if path in _HELD:
        return _HELD[path]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # absent, or a link: no lease of chatspace's
        return None
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            return _read_owner(fd) or Lease(host="?", pid=0, since="?")
        return None
    finally:
        os.close(fd)

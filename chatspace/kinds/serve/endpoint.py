"""A serve run's endpoint: its API key (a random per-run secret in a 0600 file in the run
directory, never in a record or a log), the `Endpoint` record its task writes once the server
answers, and what that makes of the run (`endpoint_state`: queued, starting, serving, ended,
failed, unknown, not started)."""

from __future__ import annotations

import errno
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from chatspace.errors import BadInput
from chatspace.names import check_no_link
from chatspace.runs.formats import Endpoint
from chatspace.runs.lease import holder
from chatspace.runs.record import Run, read_typed_record

KEY_FILE = "api-key"


def key_path(run: Run) -> Path:
    return run.dir / KEY_FILE


def ensure_key(run: Run) -> str:
    """The run's API key, made (0600, never replaced) by its first serving attempt."""
    path = check_no_link(run.root, key_path(run), f"run {run.run_id}")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return read_key(run)
    with os.fdopen(fd, "w") as out:
        out.write(f"sk-chatspace-{secrets.token_urlsafe(32)}\n")
    return read_key(run)


def read_key(run: Run) -> str:
    """The run's API key; BadInput when it is missing, a link or readable by others."""
    path = key_path(run)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        what = "is a link" if exc.errno == errno.ELOOP else "does not exist yet"
        raise BadInput(f"run {run.run_id}: its API key file {path} {what}") from None
    with os.fdopen(fd) as key_file:
        if os.fstat(key_file.fileno()).st_mode & 0o077:
            raise BadInput(f"run {run.run_id}: {path} is readable by others (it must be "
                           "0600): not used")
        return key_file.read().strip()


def endpoint_path(run: Run) -> Path:
    return Endpoint.path_in(run.root, run_id=run.run_id)


def read_endpoint(run: Run) -> Endpoint | None:
    path = endpoint_path(run)
    return read_typed_record(path, Endpoint) if path.exists() else None


@dataclass(frozen=True)
class EndpointState:
    """What a serve run is doing: `state` (queued, starting, serving, ended, failed, unknown,
    not started) and, once
    its server answered, its endpoint."""

    state: str
    endpoint: Endpoint | None

    def line(self) -> str:
        if self.state == "serving" and self.endpoint is not None:
            return f"serving at {self.endpoint.url}"
        if self.endpoint is not None and self.endpoint.ended_at:
            return (f"{self.state}: served at {self.endpoint.url} from "
                    f"{self.endpoint.started_at} to {self.endpoint.ended_at}")
        return self.state


def endpoint_state(run: Run, task_state: str) -> EndpointState:
    """The run's state from its task's state (`chatspace status`) and its endpoint record: a
    record counts as serving only while its task process holds the task's lease."""
    endpoint = read_endpoint(run)
    if task_state in ("pending", "requeued"):
        return EndpointState("queued", endpoint)
    if task_state == "running":
        owner = holder(run, 0)
        current = (endpoint is not None and endpoint.ended_at is None and owner is not None
                   and (owner.host, owner.pid) == (endpoint.node, endpoint.task_pid))
        return EndpointState("serving" if current else "starting", endpoint)
    if task_state in ("failed", "unknown"):  # unknown: SLURM cannot be asked
        return EndpointState(task_state, endpoint)
    return EndpointState("ended" if endpoint is not None or task_state == "done"
                         else "not started", endpoint)

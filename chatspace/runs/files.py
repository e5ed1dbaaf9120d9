"""Files as chatspace writes and reads them, everywhere (runs, downloads, models, experiments,
chat transcripts): atomically (a dot-named temp file created with ``O_EXCL | O_NOFOLLOW``
beside the target, fsync, rename, fsync of the folder), and read back only as bounded regular
files, as strict JSON (no NaN); Parquet written the same way, file hashes, the root, and what
wrote a file (`tool_info`)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import socket
import stat
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from chatspace import __version__
from chatspace.errors import BadInput
from chatspace.runs.typed_records import UnreadableRecord


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.
    The temp name carries host and pid (a shared filesystem sees several nodes) and starts
    with a dot, so that readers skip it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{socket.gethostname()}-{os.getpid()}-{path.name}")
    tmp.unlink(missing_ok=True)  # ours, left by a killed attempt of this pid (or a planted link)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o666))  # created here, so writing to the name cannot follow a link
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    finally:
        tmp.unlink(missing_ok=True)


def strict_json(data: Any) -> Any:
    """`data` with every non-finite float (NaN, infinity) as None: records are strict JSON,
    which has no NaN."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: strict_json(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [strict_json(v) for v in data]
    return data


def write_json(path: Path, data: Any) -> None:
    text = json.dumps(strict_json(data), indent=2, sort_keys=True, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


MAX_RECORD_BYTES = 64 << 20


def read_regular(path: Path, limit: int = MAX_RECORD_BYTES) -> bytes:
    """The bytes of `path` if it is a regular file (not a link, FIFO or device) of at most
    `limit` bytes; UnreadableRecord otherwise, FileNotFoundError if absent. A hostile or
    broken file on a shared root can neither hang a reader nor exhaust its memory."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnreadableRecord(f"{path} is a link, not a record chatspace wrote") from None
        if exc.errno == errno.ENOENT:
            raise FileNotFoundError(exc.errno, exc.strerror, str(path)) from None
        raise UnreadableRecord(f"{path} cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableRecord(f"{path} is not a regular file")
        if info.st_size > limit:
            raise UnreadableRecord(f"{path} has {info.st_size} bytes, more than a record may "
                                   f"({limit})")
        return fh.read(limit)


def read_json(path: Path) -> Any:
    """A JSON record file (`read_regular`); UnreadableRecord (one line naming the file) if it
    does not parse."""
    try:
        return json.loads(read_regular(path))
    except (ValueError, RecursionError) as exc:  # JSON's and UTF-8's errors are ValueErrors
        raise UnreadableRecord(f"{path} does not parse as JSON ({type(exc).__name__}): it was "
                               "torn by a crash or edited") from None


DEFAULT_ROOT = "/workspace"


def default_root() -> Path:
    return Path(os.environ.get("CHATSPACE_ROOT", DEFAULT_ROOT))


def check_writable(root: Path) -> None:
    probe = root
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise BadInput(f"root {root} is not writable (checked {probe}); "
                       "choose another with --root or CHATSPACE_ROOT")


def write_parquet(path: Path, tables: Iterable[pa.Table], schema: pa.Schema,
                  options: dict[str, Any]) -> None:
    """Write tables (one row group each) to `path` atomically: a reader never sees a partial
    file, and a failure leaves nothing behind."""
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, **options) as writer:
        for table in tables:
            writer.write_table(table, row_group_size=max(table.num_rows, 1))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit(where: Path) -> str | None:
    """The commit checked out at `where` (None outside a git repository, or without git)."""
    try:
        done = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=where,
                              capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def tool_info() -> dict[str, str | None]:
    return {"version": __version__, "git_sha": git_commit(Path(__file__).parent)}

"""Shared-memory segments that carry captures from the vLLM worker process to the client.

A segment is one file ``/dev/shm/chatspace-{owner pid}-{unique}`` holding raw bytes: the worker
creates it at its final size, assembles captured rows straight into it (no extra copy), and
sends the client only its name and layout (``[{"layer", "offset", "shape", "dtype"}]``). The
client maps it copy-on-write and views the bytes as tensors of any dtype (bf16 included, since
the bytes are viewed as uint8 first). Releasing a segment unlinks its name; memory returns once
the last mapping is gone, so releasing never invalidates a tensor already read.

Nothing is left behind: the client releases (context manager, `close`, finalizer), the owner
sweeps its own segments older than ``CHATSPACE_SHM_TTL`` seconds (default 600), and any sweep
removes segments whose owner process is gone. ``CHATSPACE_MAX_SHM_GB`` caps the bytes all
chatspace segments may hold together (default: half of ``/dev/shm``).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import time
import uuid
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
PREFIX = "chatspace-"
ALIGN = 64


def ttl_seconds() -> float:
    return float(os.environ.get("CHATSPACE_SHM_TTL", "600"))


def cap_bytes() -> int:
    value = os.environ.get("CHATSPACE_MAX_SHM_GB")
    if value:
        return int(float(value) * 2**30)
    stats = os.statvfs(SHM_DIR)
    return stats.f_blocks * stats.f_frsize // 2


def pid_namespace() -> str:
    """This process's pid namespace: a pid means something only inside its namespace."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


def segments() -> list[Path]:
    """This user's chatspace segments (another user's are neither counted nor touched)."""
    mine = []
    for path in sorted(SHM_DIR.glob(PREFIX + "*")):
        with contextlib.suppress(OSError):  # gone meanwhile, or not readable
            if path.stat().st_uid == os.getuid():
                mine.append(path)
    return mine


def live_bytes() -> int:
    total = 0
    for path in segments():
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


def owner(path: Path) -> int | None:
    """The pid that created a segment, when it was created in this pid namespace (names are
    ``chatspace-{pid}-{namespace}-{random}``); None otherwise."""
    pid, _, rest = path.name[len(PREFIX):].partition("-")
    namespace = rest.split("-", 1)[0]
    return int(pid) if pid.isdigit() and namespace == pid_namespace() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(ttl: float | None = None) -> int:
    """Remove this process's segments older than `ttl` seconds and every segment of this user
    whose owner process (in this pid namespace) is gone; return how many were removed."""
    ttl = ttl_seconds() if ttl is None else ttl
    now, me, removed = time.time(), os.getpid(), 0
    for path in segments():
        pid = owner(path)
        try:
            expired = pid == me and now - path.stat().st_mtime > ttl
        except FileNotFoundError:
            continue
        if expired or (pid is not None and pid != me and not _alive(pid)):
            with contextlib.suppress(FileNotFoundError, PermissionError):
                path.unlink()
                removed += 1
    if removed:
        log.info("removed %d shared-memory capture segment(s) (expired or orphaned)", removed)
    return removed


def layout(shapes: dict[int, tuple[int, ...]], dtype: torch.dtype) -> tuple[list[dict], int]:
    """Where each layer's tensor lies in one segment, and the segment's size."""
    entries, offset = [], 0
    itemsize = torch.empty((), dtype=dtype).element_size()
    for layer, shape in shapes.items():
        entries.append({"layer": layer, "offset": offset, "shape": list(shape),
                        "dtype": str(dtype).removeprefix("torch.")})
        size = itemsize
        for dim in shape:
            size *= dim
        offset += -(-size // ALIGN) * ALIGN
    return entries, offset


def create(entries: list[dict], size: int, cap: int) -> tuple[str, dict[int, torch.Tensor]]:
    """A new segment of `size` bytes and writable tensors over it, one per layout entry.
    RuntimeError when it would take the chatspace total over `cap` bytes."""
    live = live_bytes()
    if live + size > cap:
        raise RuntimeError(
            f"captures need {size / 2**30:.3f} GB of shared memory but chatspace segments "
            f"already hold {live / 2**30:.3f} GB of the {cap / 2**30:.3f} GB cap "
            "(CHATSPACE_MAX_SHM_GB): close capture handles sooner or raise the cap")
    name = f"{PREFIX}{os.getpid()}-{pid_namespace()}-{uuid.uuid4().hex[:16]}"
    fd = os.open(SHM_DIR / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, max(size, 1))
        buffer = mmap.mmap(fd, max(size, 1))
    finally:
        os.close(fd)
    return name, views(buffer, entries)


def views(buffer: mmap.mmap, entries: list[dict]) -> dict[int, torch.Tensor]:
    raw = torch.frombuffer(buffer, dtype=torch.uint8)
    tensors = {}
    for entry in entries:
        dtype = getattr(torch, entry["dtype"])
        count = 1
        for dim in entry["shape"]:
            count *= dim
        nbytes = count * torch.empty((), dtype=dtype).element_size()
        chunk = raw[entry["offset"]:entry["offset"] + nbytes]
        tensors[entry["layer"]] = chunk.view(dtype).reshape(entry["shape"])
    return tensors


def open_segment(name: str, entries: list[dict]) -> dict[int, torch.Tensor]:
    """The tensors of a segment, mapped copy-on-write (no copy is made)."""
    path = SHM_DIR / name
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise RuntimeError(f"capture segment {name} is gone: it was released, or it expired "
                           f"after CHATSPACE_SHM_TTL={ttl_seconds():g} s") from None
    try:
        buffer = mmap.mmap(fd, os.fstat(fd).st_size, access=mmap.ACCESS_COPY)
    finally:
        os.close(fd)
    return views(buffer, entries)


def release(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (SHM_DIR / name).unlink()

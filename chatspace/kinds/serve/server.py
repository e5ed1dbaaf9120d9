"""vLLM's OpenAI-compatible server with chatspace's steering, as a child process: its command
line (`server_command`), a free port, and one serving session (`serve_until_stopped`: start,
wait until it answers, stop on SIGINT / SIGTERM / SIGUSR2). `chatspace serve` and the serve
kind's task both serve this way."""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatspace.errors import BadInput, RunFailed

log = logging.getLogger(__name__)

MIDDLEWARE = "chatspace.serve.middleware.SteeringMiddleware"
READY_SECONDS = 1800.0
# SLURM's cancel and time limit (SIGTERM, and submitit's pre-timeout SIGUSR2), and Ctrl-C
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


def server_command(path: str, host: str, port: int, compile_model: bool | None, ranks: int,
                   max_model_len: int | None, dtype: str) -> tuple[list[str], dict[str, str]]:
    """The command line of a steered vLLM server, and its environment."""
    import torch

    from chatspace.steering.vllm_backend import (
        ENV_DEFAULTS,
        EXTENSION,
        check_v1_runner,
        compiles,
        cpu_thread_binding,
    )

    env = {**ENV_DEFAULTS, **os.environ}
    cuda = torch.cuda.is_available()
    if ranks > 1 and not cuda:
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_thread_binding(ranks))
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", env["VLLM_USE_V2_MODEL_RUNNER"])
    try:
        check_v1_runner()
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    # vLLM's server module (`vllm serve` itself reads the version of a package named vllm,
    # which vllm-cpu is not); its warning that the module path is deprecated is silenced
    command = [sys.executable, "-W", "ignore::DeprecationWarning", "-m",
               "vllm.entrypoints.openai.api_server", "--model", path, "--host", host,
               "--port", str(port), "--dtype", dtype,
               "--tensor-parallel-size", str(ranks), "--worker-extension-cls", EXTENSION,
               "--middleware", MIDDLEWARE, "--served-model-name", Path(path).name]
    if max_model_len is not None:
        command += ["--max-model-len", str(max_model_len)]
    if not cuda:  # as VLLMBackend: the CPU runner cannot rewind a seeded partial prefill
        command += ["--no-enable-chunked-prefill"]
    if not compiles(compile_model):
        command += ["--enforce-eager"]
    elif cuda:
        from chatspace.steering.vllm_ops import cuda_compilation

        command += ["--compilation-config", json.dumps(cuda_compilation())]
    return command, env


def server_env(env: dict[str, str], model: str, root: Path, default: str | None,
               key: str | None) -> dict[str, str]:
    """`env` with what the middleware reads (`CHATSPACE_SERVE`) and the API key (never an
    argument: vLLM logs its arguments)."""
    env = {**env, "CHATSPACE_SERVE": json.dumps({"model": model, "root": str(root),
                                                   "default": default})}
    if key is not None:
        env["VLLM_API_KEY"] = key
    return env


def free_port(host: str) -> int:
    """A port free on `host` now (the server binds it moments later)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def public_host(host: str) -> str:
    """The name clients use for a server listening on `host`: this node's name when it
    listens on every interface."""
    return socket.gethostname() if host in ("0.0.0.0", "::", "") else host


def api_key_from(path: str | Path, what: str) -> str:
    """The key on the first line of `path`; BadInput naming `what` if there is none."""
    try:
        key = Path(path).read_text().splitlines()[0].strip()
    except (OSError, IndexError, UnicodeDecodeError):
        key = ""
    if not key:
        raise BadInput(f"{what} {path}: not a readable file with a key on its first line")
    return key


def _die_with_parent() -> None:
    """In the server's process: SIGTERM when the process that started it dies (a task
    SIGKILLed after SLURM's grace time must not leave an engine behind)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass(frozen=True)
class Session:
    """One serving session: the server's pid, when it answered (None: never), the signal
    that stopped it (None: it exited by itself) and its exit status."""

    pid: int
    ready_at: float | None
    stopped_by: str | None
    exit_code: int


def serve_until_stopped(command: list[str], env: dict[str, str], url: str,
                        on_ready: Callable[[int], None]) -> Session:
    """Start the server, call `on_ready(pid)` once ``/health`` answers, and wait for it to
    end; SIGINT, SIGTERM and SIGUSR2 stop it (their previous handlers are restored after).
    RunFailed if it exits with an error that no stop signal asked for."""
    process = subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)
    stopped: list[str] = []

    def stop(signum: int, frame: Any) -> None:
        stopped.append(signal.Signals(signum).name)
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    ready_at = None
    try:
        deadline = time.monotonic() + READY_SECONDS
        while process.poll() is None and not stopped and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    ready_at = time.time()
                    break
            except OSError:
                time.sleep(0.5)
        if ready_at is not None:
            on_ready(process.pid)
        elif process.poll() is None and not stopped:
            process.terminate()
            process.wait()
            raise RunFailed(f"the vLLM server did not answer within {READY_SECONDS:.0f} s")
        code = process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if process.poll() is None:  # an exception while waiting: the server goes too
            process.kill()
            process.wait()
    if ready_at is None and not stopped or code not in (0, -signal.SIGTERM):
        raise RunFailed(f"the vLLM server exited with status {code} (its log is above)")
    return Session(process.pid, ready_at, stopped[0] if stopped else None, code)

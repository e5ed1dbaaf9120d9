"""`chatspace serve`: a steered model behind vLLM's OpenAI-compatible server, for evaluation
harnesses and `openai` clients (README, Evaluating a steered model)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import click

from chatspace.cli.options import resolve_root, root_option
from chatspace.errors import BadInput, RunFailed
from chatspace.steering.choices import OP_NAMES

MIDDLEWARE = "chatspace.serve.middleware.SteeringMiddleware"
READY_SECONDS = 1800.0


@click.command()
@click.argument("model")
@click.option("--steer", "steer_file", default=None,
              help="The default steering spec (SteeringSpec.save) of every request that names "
                   "none; a request's `steering: null` is unsteered.")
@click.option("--vector", default=None,
              help="A default vector instead: a file (.npy, .pt, .safetensors) or a vectors "
                   "run (id or dir), with --vector-key, --layer, --scale, --op.")
@click.option("--vector-key", default=None,
              help="The vector's name in the file or run (its layer is the default --layer).")
@click.option("--layer", type=int, default=None, help="The vector's layer (default: middle).")
@click.option("--scale", type=float, default=None, help="The vector's scale (default 1).")
@click.option("--op", default="add", show_default=True, help="add, cap or ablate.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface of the node).")
@click.option("--port", type=int, default=8000, show_default=True,
              help="Port to listen on (0: a free one, printed when ready).")
@click.option("--compile/--no-compile", "compile_model", default=None,
              help="vLLM's compiled model and CUDA graphs, or eager mode (default: compiled "
                   "on CUDA, eager on the CPU).")
@click.option("--tensor-parallel-size", type=int, default=1, show_default=True)
@click.option("--max-model-len", type=int, default=None, help="Context length.")
@click.option("--dtype", default="auto", show_default=True, help="The model's dtype.")
@click.option("--api-key-file", type=click.Path(dir_okay=False), default=None,
              help="A file whose first line is the API key clients must send (never "
                   "logged); without one the server is open to whoever reaches the port.")
@root_option
def serve(model: str, steer_file: str | None, vector: str | None, vector_key: str | None,
          layer: int | None, scale: float | None, op: str, host: str, port: int,
          compile_model: bool | None, tensor_parallel_size: int, max_model_len: int | None,
          dtype: str, api_key_file: str | None, root: str | None) -> None:
    """Serve MODEL (a local directory, a model recorded with download-model, or a cached name)
    with vLLM's OpenAI-compatible server (/v1/chat/completions, /v1/completions, /v1/models,
    streaming, logprobs) and chatspace's steering: per request in the body's `steering`
    field (`extra_body` of the openai client), a default spec (--steer or --vector),
    captures (`capture`, fetched from /v1/captures/ID) and token metrics
    (`chatspace_metrics`). Prints the base URL once the server answers; Ctrl-C stops it."""
    from chatspace.models import find_model, model_shape

    if op not in OP_NAMES:
        raise BadInput(f"--op {op!r} is not one of {', '.join(OP_NAMES)}")
    if steer_file and vector:
        raise BadInput("give --steer or --vector, not both")
    if not 0 <= port < 65536 or tensor_parallel_size < 1:
        raise BadInput("--port must be within 0..65535 and --tensor-parallel-size >= 1")
    key = _api_key(api_key_file)
    root_path = resolve_root(root)
    path = find_model(model, root_path).path
    shape = model_shape(path, model)
    with tempfile.TemporaryDirectory(prefix="chatspace-serve-") as scratch:
        default = None
        if steer_file or vector:
            from chatspace.chat.session import steering_from

            try:
                steering = steering_from(steer_file or vector, layer, scale, op,
                                         shape.hidden_size, shape.num_layers, vector_key,
                                         root_path)
            except Exception as exc:  # any file that does not load is bad input
                raise BadInput(f"--{'steer' if steer_file else 'vector'}: {exc}") from None
            default = str(Path(scratch) / "default.safetensors")
            steering.spec.save(default)
        port = port or free_port(host)
        command, env = server_command(path, host, port, compile_model, tensor_parallel_size,
                                      max_model_len, dtype)
        env["CHATSPACE_SERVE"] = json.dumps({"model": path, "root": str(root_path),
                                             "default": default})
        if key is not None:
            env["VLLM_API_KEY"] = key  # not an argument: vLLM logs its arguments
        run_server(command, env, f"http://{host}:{port}")


def server_command(path: str, host: str, port: int, compile_model: bool | None, ranks: int,
                   max_model_len: int | None, dtype: str) -> tuple[list[str], dict[str, str]]:
    """The `vllm serve` command line of a steered server, and its environment."""
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


def run_server(command: list[str], env: dict[str, str], url: str) -> None:
    """Start the server, print its base URL once it answers, and wait for it; SIGINT and
    SIGTERM stop it (SLURM's cancel among them)."""
    process = subprocess.Popen(command, env=env)
    stop = lambda *_: process.send_signal(signal.SIGTERM)  # noqa: E731
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    deadline = time.monotonic() + READY_SECONDS
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                click.echo(f"serving at {url}/v1", err=True)
                break
        except OSError:
            time.sleep(0.5)
    code = process.wait()
    if code not in (0, -signal.SIGTERM):
        raise RunFailed(f"the vLLM server exited with status {code} (its log is above)")


def _api_key(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        key = Path(path).read_text().splitlines()[0].strip()
    except (OSError, IndexError, UnicodeDecodeError):
        key = ""
    if not key:
        raise BadInput(f"--api-key-file {path}: not a readable file with a key on its first "
                       "line")
    return key


def free_port(host: str) -> int:
    """A port free on `host` now (the server binds it moments later)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


COMMANDS = [serve]

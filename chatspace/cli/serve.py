"""`chatspace serve`: a steered model behind vLLM's OpenAI-compatible server, for evaluation
harnesses and `openai` clients (README, Evaluating a steered model)."""

from __future__ import annotations

import shlex
import tempfile
from pathlib import Path

import click

from chatspace.cli.options import json_option, open_run, resolve_root, root_option, run_argument
from chatspace.cli.output import emit
from chatspace.errors import BadInput, RunFailed
from chatspace.kinds.serve.server import (
    api_key_from,
    free_port,
    public_host,
    serve_until_stopped,
    server_command,
    server_env,
)
from chatspace.steering.choices import OP_NAMES


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
    key = api_key_from(api_key_file, "--api-key-file") if api_key_file else None
    root_path = resolve_root(root)
    path = find_model(model, root_path).path
    shape = model_shape(path, model)
    with tempfile.TemporaryDirectory(prefix="chatspace-serve-") as scratch:
        default = None
        if steer_file or vector:
            from chatspace.kinds.vector_refs import default_steering

            try:
                spec, _ = default_steering(steer_file or vector, layer, scale, op,
                                           shape.hidden_size, shape.num_layers, vector_key,
                                           root_path)
            except Exception as exc:  # any file that does not load is bad input
                raise BadInput(f"--{'steer' if steer_file else 'vector'}: {exc}") from None
            default = str(Path(scratch) / "default.safetensors")
            spec.save(default)
        port = port or free_port(host)
        command, env = server_command(path, host, port, compile_model, tensor_parallel_size,
                                      max_model_len, dtype)
        url = f"http://{public_host(host)}:{port}/v1"
        serve_until_stopped(command, server_env(env, path, root_path, default, key),
                            url.removesuffix("/v1"),
                            lambda pid: click.echo(f"serving at {url}", err=True))


@click.command()
@run_argument
@json_option
def endpoint(run_ref: str, root: str | None, as_json: bool) -> None:
    """Print the lines that point an OpenAI client at serve run RUN's server, once it serves:
    `eval "$(chatspace endpoint RUN)"` sets OPENAI_BASE_URL and OPENAI_API_KEY (the run's key,
    readable only by you). Exit 1 while it is not serving (queued, starting or ended)."""
    from chatspace.kinds.serve.endpoint import endpoint_state, read_key
    from chatspace.runs.status import run_status

    run = open_run(run_ref, root)
    if run.kind.name != "serve":
        raise BadInput(f"run {run.run_id} is a {run.kind.name} run, not a serve run")
    state = endpoint_state(run, run_status(run).tasks[0].state)
    if state.state != "serving" or state.endpoint is None:
        raise RunFailed(f"run {run.run_id} is not serving: {state.line()}")
    key = read_key(run)
    emit(as_json, {"run_id": run.run_id, "base_url": state.endpoint.url, "api_key": key},
         [f"export OPENAI_BASE_URL={shlex.quote(state.endpoint.url)}",
          f"export OPENAI_API_KEY={shlex.quote(key)}"])


COMMANDS = [serve, endpoint]

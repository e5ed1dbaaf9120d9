"""`chatspace chat`: talk to a model with a persona, a system prompt and live steering before
launching a sweep with the same settings."""

from __future__ import annotations

import sys

import click

from chatspace.cli.options import resolve_root, root_option
from chatspace.errors import BadInput
from chatspace.steering.choices import BACKENDS, OP_NAMES


@click.command()
@click.argument("model")
@click.option("--backend", default="hf", show_default=True, help="hf or vllm.")
@click.option("--dtype", default="float32", show_default=True)
@click.option("--device", default=None,
              help="hf backend: cuda, mps or cpu (default: the first of them available).")
@click.option("--persona", default=None, help='Answer as NAME: "You are a/an NAME." and the '
              "assistant role renamed, as `submit steer` renders personas.")
@click.option("--system", default=None, help="The system prompt (instead of the persona's).")
@click.option("--thinking/--no-thinking", default=None,
              help="enable_thinking for the chat template (default: the template's).")
@click.option("--max-tokens", type=int, default=256, show_default=True)
@click.option("--temperature", type=float, default=0.7, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--steer", "steer_file", default=None,
              help="A steering spec file (SteeringSpec.save) or, with --layer/--scale/--op, a "
                   "vector file.")
@click.option("--vector", default=None,
              help="A vector file (.npy, .pt, .safetensors) or a vectors run (id or dir).")
@click.option("--vector-key", default=None,
              help="The vector's name in the file or run, e.g. contrast/pirate-assistant/L12 "
                   "(its layer is the default --layer).")
@click.option("--layer", type=int, default=None, help="The vector's layer (default: middle).")
@click.option("--scale", type=float, default=None, help="The vector's scale (default 1).")
@click.option("--op", default="add", show_default=True, help="add, cap or ablate.")
@click.option("--capture-layers", default=None, metavar="L,L",
              help="Capture these layers' hidden states each reply (shapes and norms shown).")
@click.option("--max-model-len", type=int, default=None, help="vllm backend: context length.")
@click.option("--compile/--no-compile", "compile_model", default=None,
              help="vllm backend: its compiled model and CUDA graphs, or eager mode (default: "
                   "compiled on CUDA, eager on the CPU).")
@root_option
def chat(model: str, backend: str, dtype: str, device: str | None, persona: str | None,
         system: str | None, thinking: bool | None, max_tokens: int, temperature: float,
         seed: int, steer_file: str | None, vector: str | None, vector_key: str | None,
         layer: int | None,
         scale: float | None, op: str, capture_layers: str | None, max_model_len: int | None,
         compile_model: bool | None, root: str | None) -> None:
    """Chat with MODEL (a local directory, a model recorded with download-model, or a cached
    name) in the terminal, with a persona, a system prompt and live steering.

    Replies stream token by token under the persona's name, the thinking section set apart;
    Escape or Ctrl-C stops a reply, Ctrl-D or /quit leaves; /help lists the slash commands
    (/persona, /system, /thinking, /tokens, /steer, /scale, /save …). With stdin piped, each
    line is a message (or a command) and each reply is printed.
    """
    from chatspace.models import find_model, model_shape

    if backend not in BACKENDS:
        raise BadInput(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if op not in OP_NAMES:
        raise BadInput(f"--op {op!r} is not one of {', '.join(OP_NAMES)}")
    if steer_file and vector:
        raise BadInput("give --steer or --vector, not both")
    if max_tokens < 1 or not 0 <= temperature <= 10:
        raise BadInput("--max-tokens must be >= 1 and --temperature within 0..10")
    path = find_model(model, resolve_root(root)).path
    hidden_size, num_layers, _, _ = model_shape(path, model)
    vector_defaults = {"layer": layer, "scale": scale, "op": op, "root": resolve_root(root)}
    from chatspace.chat.loop import parse_layers

    try:
        layers = parse_layers(capture_layers, num_layers) if capture_layers else []
    except ValueError as exc:
        raise BadInput(f"--capture-layers: {exc}") from None
    steering = None
    if steer_file or vector:
        from chatspace.chat.session import steering_from

        try:
            steering = steering_from(steer_file or vector, hidden_size=hidden_size,
                                     num_layers=num_layers, key=vector_key, **vector_defaults)
        except Exception as exc:  # any file that does not load is bad input
            raise BadInput(f"--{'steer' if steer_file else 'vector'}: {exc}") from None
    given = {"device": device} if backend == "hf" else {"max_model_len": max_model_len}
    engine = {k: v for k, v in {**given, "compile": compile_model}.items() if v is not None}
    _chat(path, backend, dtype, engine, steering,
          vector_defaults, persona=persona, system=system, thinking=thinking,
          max_tokens=max_tokens, temperature=temperature, seed=seed, capture_layers=layers)


def _chat(path: str, backend: str, dtype: str, engine: dict, steering, vector_defaults: dict,
          **settings) -> None:
    from chatspace.chat.loop import Chat, run_piped, run_terminal
    from chatspace.chat.session import ChatSession, Settings
    from chatspace.steering.model import SteerModel

    try:
        model = SteerModel(path, backend=backend, dtype=dtype, **engine)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    with model:
        session = ChatSession(model, Settings(**settings), steering)
        interactive = sys.stdin.isatty()
        chat_loop = Chat(session, sys.stdout, interactive, vector_defaults)
        if interactive:
            run_terminal(chat_loop)
        else:
            run_piped(chat_loop, sys.stdin)


COMMANDS = [chat]

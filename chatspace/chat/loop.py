"""The chat loop: messages and slash commands from a terminal (streamed replies; Escape or
Ctrl-C stops a reply, Ctrl-D or /quit leaves) or one per line from a pipe."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import termios
import threading
import tty
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from chatspace.chat.display import ReplyPrinter
from chatspace.chat.session import ChatSession, steering_from

HELP = """commands:
  /clear             forget the conversation
  /persona NAME      answer as NAME ("You are a/an NAME.", the assistant role renamed);
                     /persona off
  /system TEXT       set the system prompt (/system off: the persona's again); /system shows it
  /thinking          thinking mode on; /nothinking off
  /tokens N          at most N tokens per reply
  /temperature T     sampling temperature (0: greedy)
  /steer             show the steering; /steer FILE (a spec or a vector file), or
                     /steer RUN KEY (a vectors run's vector); /steer off
  /capture L,L       capture those layers' hidden states each reply (shapes and norms shown);
                     /capture off
  /scale S           the steering scale (add and ablate ops)
  /save FILE         the conversation and its settings as JSONL (a prompts file for
                     `chatspace submit steer`)
  /help              this text; /quit (or Ctrl-D) leaves
Escape or Ctrl-C stops a reply."""
ESCAPE = b"\x1b"


class Interrupt:
    """While a reply streams in a terminal: Ctrl-C and Escape set `requested` instead of
    ending the program (stdin in cbreak mode, SIGINT caught)."""

    def __init__(self, watch_keys: bool):
        self.watch_keys = watch_keys
        self.requested = threading.Event()

    def pressed(self) -> bool:
        if self.watch_keys and not self.requested.is_set():
            while select.select([sys.stdin], [], [], 0)[0]:
                if os.read(sys.stdin.fileno(), 1) == ESCAPE:
                    self.requested.set()
                    break
        return self.requested.is_set()

    @contextlib.contextmanager
    def armed(self) -> Iterator[Interrupt]:
        self.requested.clear()
        previous = signal.signal(signal.SIGINT, lambda *_: self.requested.set())
        saved = termios.tcgetattr(sys.stdin) if self.watch_keys else None
        try:
            if self.watch_keys:
                tty.setcbreak(sys.stdin.fileno())
            yield self
        finally:
            if saved is not None:
                termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)
            signal.signal(signal.SIGINT, previous)


class Chat:
    def __init__(self, session: ChatSession, out: TextIO, interactive: bool,
                 vector_defaults: dict):
        self.session, self.out, self.interactive = session, out, interactive
        self.vector_defaults = vector_defaults  # op / layer / scale for `/steer VECTOR`
        self.interrupt = Interrupt(watch_keys=interactive)
        self.commands: dict[str, Callable[[str], None]] = {
            "clear": self._clear, "persona": self._persona, "system": self._system,
            "thinking": lambda _: self._thinking(True),
            "nothinking": lambda _: self._thinking(False), "tokens": self._tokens,
            "temperature": self._temperature, "steer": self._steer, "scale": self._scale,
            "capture": self._capture,
            "save": self._save, "help": lambda _: self.say(HELP)}

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def handle(self, line: str) -> bool:
        """One line of input; False when the chat should end."""
        line = line.strip()
        if not line:
            return True
        if not line.startswith("/"):
            try:
                self.reply(line)
            except (ValueError, RuntimeError) as exc:  # e.g. a history past the context
                self.say(f"\n(no reply: {exc}; /clear starts afresh)")
            return True
        name, _, argument = line[1:].partition(" ")
        if name in ("quit", "exit"):
            return False
        command = self.commands.get(name)
        if command is None:
            self.say(f"unknown command /{name} (/help lists them)")
            return True
        try:
            command(argument.strip())
        except (ValueError, OSError) as exc:
            self.say(f"/{name}: {exc}")
        except Exception as exc:  # a file that no loader understands: keep the chat alive
            self.say(f"/{name}: {type(exc).__name__}: {exc}")
        return True

    def reply(self, message: str) -> None:
        session = self.session
        model = session.model
        printer = ReplyPrinter(model.tokenizer, session.settings.label,
                               session.settings.thinking is not False, self.out,
                               styled=self.interactive)

        def stream(ids: list[int]) -> bool:
            printer.feed(ids)
            return not self.interrupt.pressed()

        with self.interrupt.armed():
            out = model.generate_sync(
                [session.prompt_ids(message)], session.sampling(),
                steering_spec=session.steering.spec if session.steering else None,
                capture_layers=session.settings.capture_layers or None, streamer=stream)[0]
        reply = printer.finish(out.finish_reason == "stopped")
        captured = {}
        if out.capture is not None:
            for layer, states in sorted(out.capture.layers.items()):
                norm = float(states[-1].float().norm())
                captured[str(layer)] = {"shape": list(states.shape), "last_norm": norm}
                self.say(f"  captured layer {layer}: {' x '.join(map(str, states.shape))}, "
                         f"last-token norm {norm:.4g}")
            model.run(out.capture.close())
        session.record(message, reply, printer.thinking_text, out.finish_reason, captured)

    def _clear(self, _: str) -> None:
        self.session.clear()
        self.say("(conversation cleared)")

    def _persona(self, name: str) -> None:
        settings = self.session.settings
        if name:
            settings.persona = None if name in ("off", "none") else name
        self.say(f"persona: {settings.persona or 'none'}; system prompt: "
                 f"{settings.system_prompt() or '(none)'}")

    def _system(self, text: str) -> None:
        settings = self.session.settings
        if text:
            settings.system = None if text == "off" else text
        self.say(f"system prompt: {settings.system_prompt() or '(none)'}")

    def _thinking(self, on: bool) -> None:
        self.session.settings.thinking = on
        self.say(f"thinking {'on' if on else 'off'}")

    def _tokens(self, value: str) -> None:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"expected a whole number of tokens >= 1, got {value!r}")
        self.session.settings.max_tokens = int(value)
        self.say(f"at most {value} tokens per reply")

    def _temperature(self, value: str) -> None:
        temperature = float(value)
        if not 0 <= temperature <= 10:
            raise ValueError(f"temperature {value} is outside 0..10")
        self.session.settings.temperature = temperature
        self.say(f"temperature {temperature:g}")

    def _steer(self, argument: str) -> None:
        session = self.session
        if argument == "off":
            session.steering = None
        elif argument:
            model = session.model
            ref, _, key = argument.partition(" ")
            session.steering = steering_from(ref, hidden_size=model.hidden_size,
                                             num_layers=model.num_layers,
                                             **{**self.vector_defaults,
                                                "key": key.strip() or None})
        self.say(session.steering.describe() if session.steering else "steering off")

    def _capture(self, value: str) -> None:
        settings = self.session.settings
        if value:
            settings.capture_layers = [] if value == "off" else \
                parse_layers(value, self.session.model.num_layers)
        self.say(f"capturing layers {', '.join(map(str, settings.capture_layers))}"
                 if settings.capture_layers else "capture off")

    def _scale(self, value: str) -> None:
        steering = self.session.steering
        if steering is None:
            raise ValueError("no steering in force (/steer FILE first)")
        scale = float(value)
        if not all(hasattr(op, "scale") for layer in steering.spec.layers.values()
                   for op in layer.ops):
            raise ValueError("cap ops have bounds, not a scale")
        steering.spec = steering.spec.with_scale(scale)
        self.say(steering.describe())

    def _save(self, path: str) -> None:
        if not path:
            raise ValueError("name a file: /save FILE")
        count = self.session.save(Path(path).expanduser())
        self.say(f"saved {count} turns to {path}")


def parse_layers(value: str, num_layers: int) -> list[int]:
    """"0,3" -> [0, 3]; ValueError naming a layer that is not one of the model's."""
    try:
        layers = sorted({int(part) for part in value.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"expected layers like 0,3, got {value!r}") from None
    for layer in layers:
        if not 0 <= layer < num_layers:
            raise ValueError(f"layer {layer} is out of range (the model has {num_layers} "
                             "decoder layers)")
    return layers


def run_terminal(chat: Chat) -> None:
    """Prompt, read, answer until Ctrl-D or /quit; Ctrl-C at the prompt only clears it."""
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    chat.say(f"chatspace chat with {chat.session.model.backend_name} — /help for commands, "
             "Ctrl-D to leave")
    while True:
        try:
            line = input("you> ")
        except EOFError:
            chat.say("")
            return
        except KeyboardInterrupt:
            chat.say("\n(Ctrl-D or /quit leaves)")
            continue
        if not chat.handle(line):
            return


def run_piped(chat: Chat, lines: TextIO) -> None:
    """One message or command per line; replies printed as they come."""
    for line in lines:
        if not chat.handle(line):
            return

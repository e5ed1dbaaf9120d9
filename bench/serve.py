"""`chatspace serve` against plain vLLM's OpenAI server of the same model and settings, driven by
one load generator, measured in one run:

    python -m bench.serve [--clients 64] [--requests 128] [--tokens 32] [--repeats 2]
        [--modes eager]

A random-weight model with the shape of Qwen2.5-0.5B (as `bench.steering_overhead`) is served by
plain ``vllm.entrypoints.openai.api_server`` and by ``chatspace serve`` (one server at a time:
an idle server's engine still polls the CPU). `--clients` concurrent clients send
`--requests` completion requests in all (the same prompt tokens, `--tokens` new tokens each,
EOS ignored, greedy) over HTTP; a figure is requests/s and output tokens/s, the best of
`--repeats`. Plain vLLM is measured before and after chatspace; chatspace with the idle
extension (no chatspace fields), one steering spec on every request, and four different specs
mixed. Targets: idle within 2 %, one spec within 5 %, four mixed within 10 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.corpus import passages
from bench.smoke import SMOKE, parse_args
from bench.steering_overhead import HIDDEN, LAYERS, build_bench_model
from chatspace.kinds.serve.server import free_port, server_command
from chatspace.steering.vllm_backend import ENV_DEFAULTS

TARGETS = {"idle extension": 0.02, "one spec, every request": 0.05,
           "four specs mixed": 0.10}


def wait_ready(url: str, process: subprocess.Popen) -> None:
    while process.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the server exited with {process.returncode}")


class Served:
    """One server process (plain vLLM, or chatspace serve) for the length of a `with`."""

    def __init__(self, path: Path, chatspace: bool, compiled: bool, log: Path):
        self.port = free_port("127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port}"
        if chatspace:
            command = [sys.executable, "-m", "chatspace", "serve", str(path), "--port",
                       str(self.port), "--dtype", "float32", "--max-model-len", "512",
                       "--root", str(path.parent),
                       "--compile" if compiled else "--no-compile"]
            env = {**ENV_DEFAULTS, **os.environ}
        else:  # the same command line less chatspace's extension and middleware
            command, env = server_command(str(path), "127.0.0.1", self.port, compiled, 1,
                                          512, "float32")
            for flag in ("--worker-extension-cls", "--middleware"):
                at = command.index(flag)
                del command[at:at + 2]
        self.command, self.env, self.log = command, env, log

    def __enter__(self) -> Served:
        with open(self.log, "a") as out:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=out,
                                            stderr=subprocess.STDOUT)
        wait_ready(self.url, self.process)
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(120)


async def load(url: str, clients: int, requests: list[dict]) -> float:
    """Seconds for `clients` concurrent clients to get through every request."""
    import openai

    queue = list(requests)
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0,
                                  timeout=3600) as client:

        async def worker() -> None:
            while queue:
                body = queue.pop()
                answer = await client.completions.create(**body)
                assert answer.usage.completion_tokens == body["max_tokens"]

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - start


def requests_for(prompt: list[int], args, steering: list | None, model: str) -> list[dict]:
    out = []
    for number in range(args.requests):
        extra = {"ignore_eos": True}
        if steering is not None:
            extra["steering"] = steering[number % len(steering)]
        out.append({"model": model, "prompt": prompt, "max_tokens": args.tokens,
                    "temperature": 0, "extra_body": extra})
    return out


def best(url: str, args, requests: list[dict]) -> float:
    asyncio.run(load(url, args.clients, requests[:args.clients]))  # warm up
    return min(asyncio.run(load(url, args.clients, requests)) for _ in range(args.repeats))


def specs(count: int) -> list[list[dict]]:
    import torch

    return [[{"op": "add", "layers": [LAYERS // 2],
              "vector": torch.randn(HIDDEN, generator=torch.Generator().manual_seed(i)).tolist(),
              "scale": 0.5}] for i in range(count)]


def measure(path: Path, prompt: list[int], args, compiled: bool, log: Path) -> None:
    model = path.name
    plain = requests_for(prompt, args, None, model)
    with Served(path, False, compiled, log) as server:
        before = best(server.url, args, plain)
    cases = {"idle extension": plain,
             "one spec, every request": requests_for(prompt, args, specs(1), model),
             "four specs mixed": requests_for(prompt, args, specs(4), model)}
    with Served(path, True, compiled, log) as server:
        seconds = {name: best(server.url, args, requests) for name, requests in cases.items()}
    if SMOKE:  # one plain server: a smoke run's figures mean nothing
        after = before
    else:
        with Served(path, False, compiled, log) as server:
            after = best(server.url, args, plain)
    base = min(before, after)
    tokens = args.requests * args.tokens
    mode = "compiled" if compiled else "eager"
    print(f"\n{mode}: plain vLLM server {args.requests / base:.2f} req/s, {tokens / base:.1f} "
          f"output tok/s (before {before:.2f} s, after {after:.2f} s)")
    for name, took in seconds.items():
        slower = took / base - 1
        print(f"  {name:26} {args.requests / took:7.2f} req/s {tokens / took:8.1f} tok/s  "
              f"slower by {slower * 100:5.1f} % (target <= {TARGETS[name] * 100:.0f} %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--modes", default="eager", help="eager, compiled or both (a,b)")
    args = parse_args(parser, clients=4, requests=8, tokens=4, repeats=1)
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="chatspace-bench-serve-") as scratch:
        work = Path(scratch)
        path = build_bench_model(work)
        tokenizer = AutoTokenizer.from_pretrained(path)
        prompt = tokenizer.encode(passages(1)[0]["text"])[:args.prompt_tokens]
        log = work / "servers.log"
        print(json.dumps({"clients": args.clients, "requests": args.requests,
                          "tokens": args.tokens, "prompt_tokens": len(prompt)}))
        try:
            for mode in args.modes.split(","):
                measure(path, prompt, args, mode == "compiled", log)
        except Exception:
            sys.stderr.write(log.read_text()[-4000:])
            raise


if __name__ == "__main__":
    main()

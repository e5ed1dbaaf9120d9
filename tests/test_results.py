"""Looking at results: `chatspace query` (DuckDB views over a root with real embed runs — the
bundled model and the OpenAI backend against the local stand-in — a real steer sweep and an
unfinished run), `chatspace report` opened in a real headless Chromium, and `chatspace viz`
through Streamlit's own app-testing harness."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from chatspace.kinds import KINDS
from chatspace.kinds.steer.spec import SteerSpec
from chatspace.runs.executors import DebugExecutor
from chatspace.runs.files import read_json
from chatspace.runs.plan import plan_run
from chatspace.runs.record import Run
from chatspace.specs import resolve_spec
from tests.helpers import PYDOCS, REPO, chatspace, embed, wait_until
from tests.openai_server import FakeOpenAI

ARTIFACTS = REPO / "logs" / "test-artifacts"


def _steer_run(root: Path, where: Path, model: Path) -> Run:
    (where / "prompts.json").write_text(json.dumps(
        ["How do lists work?", "What is a decorator?", "Explain the module system."]))
    (where / "personas.json").write_text(json.dumps(
        [{"persona": "pirate", "category": "fiction", "article": "a"},
         {"persona": "engineer", "category": "work", "article": "an"},
         {"persona": "poet", "category": "fiction", "article": "a"}]))
    np.save(where / "vector.npy", np.random.default_rng(0).standard_normal(64).astype("f4"))
    (where / "sweep.toml").write_text(f"""
[[steering]]
name = "baseline"

[[steering]]
name = "vec"
op = "add"
layers = [1]
vector = "{where / 'vector.npy'}"
scales = [2.0, 8.0]
""")
    spec = resolve_spec(SteerSpec, where / "sweep.toml", {
        "model": {"name": str(model), "backend": "hf", "dtype": "float32",
                  "max_model_len": 256},
        "prompts": {"file": str(where / "prompts.json")},
        "personas": {"file": str(where / "personas.json")},
        "generation": {"max_tokens": 10, "temperature": 0.8, "n_reps": 2, "seed": 1,
                       "thinking": True},
        "run": {"array": 2, "part_rows": 12, "name": "personas"}})
    run = plan_run(KINDS["steer"], spec, root).run
    DebugExecutor().execute(run, range(run.num_tasks))
    return run


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model_dir) -> dict:
    """A root with four runs: the bundled model (2 tasks), the OpenAI backend (3 tasks),
    a steer sweep (54 generations, 2 tasks) and an OpenAI run whose task 1 never ran."""
    root = tmp_path_factory.mktemp("results") / "ws"
    where = tmp_path_factory.mktemp("inputs")
    runs = {"st": embed(root, PYDOCS, n=80, array=2)}
    with FakeOpenAI(dim=32) as server:
        def openai(*extra: str) -> subprocess.CompletedProcess:
            return chatspace(*extra, "--backend", "openai", "--dataset", str(PYDOCS),
                             "--text-field", "text", "--n", "60", "--seed", "5", "--execute",
                             "--json", root=root, env=server.env())
        done = openai("submit", "embed", "--executor", "debug", "--array", "3")
        assert done.returncode == 0, done.stderr[-2000:]
        runs["api"] = Run.open(json.loads(done.stdout)["run_dir"], root, KINDS)
        planned = openai("plan", "embed", "--array", "3", "--n", "45")
        assert planned.returncode == 0, planned.stderr[-2000:]
        partial = Run.open(json.loads(planned.stdout)["run_dir"], root, KINDS)
        for task in ("0", "2"):
            ran = chatspace("run", "task", str(partial.dir), "--task", task,
                            env=server.env())
            assert ran.returncode == 0, ran.stderr[-2000:]
        runs["partial"] = partial
    runs["steer"] = _steer_run(root, where, tiny_model_dir("qwen3"))
    return {"root": root, **runs}


def query(ws: dict, *args: str) -> subprocess.CompletedProcess:
    return chatspace("query", *args, root=ws["root"])


def as_json(result: subprocess.CompletedProcess) -> list[dict]:
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_views_match_the_files(workspace):
    runs = {r["run_id"]: r for r in as_json(query(workspace, "SELECT * FROM runs", "--json"))}
    st, api, partial, steer = (workspace[k] for k in ("st", "api", "partial", "steer"))
    assert set(runs) == {st.run_id, api.run_id, partial.run_id, steer.run_id}
    assert {k: runs[r.run_id]["state"] for k, r in
            (("st", st), ("api", api), ("partial", partial), ("steer", steer))} == \
        {"st": "done", "api": "done", "partial": "incomplete", "steer": "done"}
    assert runs[st.run_id]["rows_done"] == 80 and runs[api.run_id]["rows_done"] == 60
    assert runs[partial.run_id]["tasks_done"] == 2 and runs[partial.run_id]["tasks"] == 3
    assert runs[steer.run_id]["rows_done"] == 54 and runs[steer.run_id]["name"] == "personas"
    manifest = read_json(api.manifest_path)
    assert manifest["totals"]["cost_usd"] > 0
    assert runs[api.run_id]["cost_usd"] == pytest.approx(manifest["totals"]["cost_usd"])
    assert runs[st.run_id]["cost_usd"] is None and runs[st.run_id]["wall_seconds"] > 0

    # embeddings: exactly the done tasks' shards, as DuckDB reads them directly
    got = as_json(query(workspace, "SELECT run_id, count(*) AS n, sum(norm) AS s FROM "
                        "embeddings GROUP BY run_id ORDER BY run_id", "--json"))
    shards = [str(p) for r in (st, api, partial) for p in sorted(r.output_dir.glob("*.parquet"))]
    direct = duckdb.sql(f"SELECT run_id, count(*) AS n, sum(norm) AS s FROM read_parquet("
                        f"{shards}) GROUP BY run_id ORDER BY run_id").fetchall()
    assert [(g["run_id"], g["n"]) for g in got] == [(d[0], d[1]) for d in direct]
    assert [g["s"] for g in got] == pytest.approx([d[2] for d in direct])
    assert dict((g["run_id"], g["n"]) for g in got)[partial.run_id] == sum(
        pq.ParquetFile(p).metadata.num_rows for p in partial.output_dir.glob("*.parquet"))

    tasks = as_json(query(workspace, "SELECT run_id, task, state, rows, "
                          "stage_busy['encode'] AS encode FROM tasks ORDER BY ALL", "--json"))
    assert len(tasks) == 2 + 3 + 3 + 2
    assert [t["state"] for t in tasks if t["run_id"] == partial.run_id] == \
        ["done", "not done", "done"]
    assert all(t["encode"] > 0 for t in tasks if t["run_id"] == st.run_id)
    per_point = as_json(query(workspace, "SELECT point, count(*) AS n FROM steer_results "
                              "GROUP BY point ORDER BY point", "--json"))
    assert per_point == [{"point": "baseline", "n": 18}, {"point": "vec/L1/x2", "n": 18},
                         {"point": "vec/L1/x8", "n": 18}]


def test_canned_questions_and_formats(workspace):
    st, api, steer = workspace["st"], workspace["api"], workspace["steer"]
    listed = query(workspace, "--list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:3] == ["run_id", "kind", "name"] and lines[-1] == "(4 rows)"
    assert len({line.index(" kind") if " kind" in line else None for line in lines[:1]}) == 1
    assert all(r.run_id in listed.stdout for r in (st, api, steer))
    rows = list(csv.DictReader(io.StringIO(query(workspace, "--summary", "--csv").stdout)))
    embed_api = [r for r in rows if r["kind"] == "embed" and r["model"] ==
                 "text-embedding-3-small"]
    assert embed_api and int(embed_api[0]["runs"]) == 2 and float(embed_api[0]["cost_usd"]) > 0
    assert [r["run_id"] for r in as_json(query(workspace, "--list", "--run", str(st.dir),
                                               "--json"))] == [st.run_id]
    only = as_json(query(workspace, "SELECT count(*) AS n FROM embeddings", "--run", api.run_id,
                         "--json"))
    assert only == [{"n": 60}]

    compared = {r["field"]: r for r in as_json(query(workspace, "--compare", st.run_id,
                                                      api.run_id, "--json"))}
    assert compared["config.model.backend"][st.run_id] == "sentence-transformers"
    assert compared["config.model.backend"][api.run_id] == "openai"
    assert compared["rows_done"][st.run_id] == 80 and compared["rows_done"][api.run_id] == 60
    assert "config.run.part_rows" not in compared  # equal values are not differences

    best = as_json(query(workspace, "--best", "avg_entropy", "--lowest", "--top", "2",
                         "--json"))
    direct = duckdb.sql(f"SELECT point, avg(avg_entropy) AS m FROM read_parquet("
                        f"{[str(p) for p in steer.output_dir.glob('results-*.parquet')]}) "
                        f"GROUP BY point ORDER BY m LIMIT 2").fetchall()
    assert [(b["point"], pytest.approx(b["avg_entropy"])) for b in best] == direct
    fastest = as_json(query(workspace, "--best", "rows_per_s", "--top", "1", "--json"))
    everything = as_json(query(workspace, "SELECT max(rows_per_s) AS m FROM runs", "--json"))
    assert fastest[0]["rows_per_s"] == everything[0]["m"]


@pytest.mark.parametrize("args, message", [
    (["SELEC 1"], "query failed: Parser Error"),
    (["SELECT * FROM nowhere"], "query failed: Catalog Error"),
    (["--list", "--run", "no-such-run"], "no planned run 'no-such-run'"),
    (["--best", "speed"], "--best speed: not a metric"),
    (["--list", "--summary"], "give one of"),
    ([], "nothing to ask"),
])
def test_bad_input_is_one_line(workspace, args, message):
    result = query(workspace, *args)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


def test_empty_root_says_so(tmp_path):
    result = chatspace("query", "--list", root=tmp_path / "nothing")
    assert result.returncode == 0
    assert "no runs under" in result.stderr and "(0 rows)" in result.stdout


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by playwright (installed with apt-get when missing and root);
    skip, saying why, where it cannot be had."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if shutil.which("chromium") is None and os.geteuid() == 0 and shutil.which("apt-get"):
        # waiting on the dpkg lock: the suite's other set-up steps may be installing too
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-qq",
                        "chromium"], capture_output=True, timeout=900)
    if shutil.which("chromium") is None:
        pytest.skip("no chromium on PATH and it could not be installed with apt-get")
    with sync_api.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=shutil.which("chromium"),
                                     args=["--no-sandbox"])
        yield instance
        instance.close()


def open_page(browser, path: Path, shot: str) -> dict:
    """Load a report; what the console said, what it fetched, and every chart's drawn size
    and mark count. Saves a full-page screenshot under logs/test-artifacts/."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors, fetched = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning")
            else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: fetched.append(r.url))
    page.goto(path.as_uri(), wait_until="load")
    charts = page.evaluate("""[...document.querySelectorAll('svg.chart')].map(s => ({
        title: s.querySelector('.title').textContent,
        width: s.getBoundingClientRect().width, height: s.getBoundingClientRect().height,
        marks: [...s.querySelectorAll('.mark')].filter(m => {
            const b = m.getBoundingClientRect(); return b.width > 0 && b.height > 0; }).length
    }))""")
    text = page.inner_text("body")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{shot}.png"), full_page=True)
    page.close()
    return {"errors": errors, "fetched": fetched, "charts": charts, "text": text}


def report(ws: dict, *args: str) -> Path:
    result = chatspace("report", *args, root=ws["root"])
    assert result.returncode == 0, result.stderr[-2000:]
    return Path(result.stdout.strip())


def assert_drawn(page: dict, titles: list[str]) -> None:
    assert page["errors"] == []
    assert all(url.startswith("file://") for url in page["fetched"]), page["fetched"]
    drawn = {c["title"]: c for c in page["charts"]}
    for title in titles:
        chart = next((c for t, c in drawn.items() if t.startswith(title)), None)
        assert chart is not None, f"no chart {title!r} in {list(drawn)}"
        assert chart["width"] > 0 and chart["height"] > 0 and chart["marks"] > 0, chart
    assert all(c["marks"] > 0 for c in page["charts"]), page["charts"]


def test_embed_report_in_a_browser(workspace, browser):
    st, api = workspace["st"], workspace["api"]
    path = report(workspace, st.run_id)
    assert path == st.dir / "report.html"
    page = open_page(browser, path, "report-embed")
    assert_drawn(page, ["rows/s per task over time", "stage busy seconds per task",
                        "stage idle seconds per task", "embedding norms",
                        "tokens and padding per task"])
    assert "no rows were skipped" in page["text"]
    api_page = open_page(browser, report(workspace, api.run_id, "-o",
                                         str(workspace["root"] / "api.html")), "report-api")
    assert_drawn(api_page, ["cost per task (USD)", "embedding norms"])


def test_steer_report_in_a_browser(workspace, browser):
    steer = workspace["steer"]
    page = open_page(browser, report(workspace, str(steer.dir)), "report-steer")
    views = ["mean entropy", "top-k mass", "thinking length"]
    assert_drawn(page, [f"{v} per {g}" for g in ("persona category", "steering point")
                        for v in views])
    results = pq.read_table(steer.output_paths(0)["results"]).to_pylist()
    assert results[0]["prompt"] in page["text"]  # the example generations table


def test_unfinished_run_and_compare_in_a_browser(workspace, browser):
    partial, st, api = workspace["partial"], workspace["st"], workspace["api"]
    result = chatspace("report", partial.run_id, root=workspace["root"])
    assert result.returncode == 0 and "tasks not done: 1" in result.stderr
    page = open_page(browser, Path(result.stdout.strip()), "report-partial")
    assert "tasks not done: 1" in page["text"] and "2 of 3 tasks" in page["text"]
    assert_drawn(page, ["embedding norms"])
    both = open_page(browser, report(workspace, st.run_id, "--compare", api.run_id, "-o",
                                     str(workspace["root"] / "both.html")), "report-compare")
    assert_drawn(both, ["rows/s per task", "embedding norms"])
    assert st.run_id in both["text"] and api.run_id in both["text"]
    mixed = chatspace("report", st.run_id, "--compare", workspace["steer"].run_id,
                      root=workspace["root"])
    assert mixed.returncode == 2 and "different kinds" in mixed.stderr
    unknown = chatspace("report", "no-such-run", root=workspace["root"])
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1


def test_viz_app(workspace, monkeypatch):
    pd = pytest.importorskip("pandas", reason="the viz extra (pandas) is not installed")
    testing = pytest.importorskip("streamlit.testing.v1",
                                  reason="the viz extra (streamlit) is not installed")
    monkeypatch.setenv("CHATSPACE_ROOT", str(workspace["root"]))
    app = testing.AppTest.from_file(str(REPO / "chatspace" / "kinds" / "steer" / "viz_app.py"),
                                    default_timeout=120)
    app.run()
    assert not app.exception
    assert app.sidebar.selectbox[0].options[-1].endswith(f"{workspace['steer'].run_id} (done)")
    assert [t.label for t in app.tabs] == ["Mean entropy", "Top-k mass", "Thinking length",
                                           "Raw data"]
    assert len(app.get("vega_lite_chart")) == 3
    stats = app.dataframe[0].value  # the first metric's summary statistics per category
    assert list(stats.columns) == ["count", "mean", "std", "min", "25%", "50%", "75%", "max"]
    rows = pq.read_table(workspace["steer"].output_paths(0)["results"]).to_pandas()
    for task in range(1, workspace["steer"].num_tasks):
        rows = pd.concat([rows, pq.read_table(
            workspace["steer"].output_paths(task)["results"]).to_pandas()])
    expected = rows.groupby("category")["avg_entropy"].describe()
    pd.testing.assert_frame_equal(stats, expected, check_exact=False, rtol=1e-6)
    raw = app.dataframe[-1].value
    assert len(raw) == 54 and "output_text" in raw.columns
    app.sidebar.multiselect[0].set_value(["work"]).run()
    raw = app.dataframe[-1].value
    assert len(raw) == 18 and set(raw["category"]) == {"work"}
    columns = next(m for m in app.multiselect if m.label == "Columns")
    columns.set_value(["persona", "avg_entropy"]).run()
    assert list(app.dataframe[-1].value.columns) == ["persona", "avg_entropy"]
    app.sidebar.radio[0].set_value("point").run()
    assert not app.exception and sorted(app.dataframe[0].value.index) == \
        ["baseline", "vec/L1/x2", "vec/L1/x8"]


def test_viz_command_serves_the_app(workspace):
    pytest.importorskip("streamlit", reason="the viz extra (streamlit) is not installed")
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "chatspace", "viz", "--port", str(port), "--root",
         str(workspace["root"])], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"})
    try:
        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health",
                                            timeout=2) as response:
                    return response.read() == b"ok"
            except OSError:
                assert server.poll() is None, server.stdout.read().decode()[-2000:]
                return False
        wait_until(healthy, timeout=120, what="the Streamlit server")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            assert response.status == 200 and b"<html" in response.read().lower()
    finally:
        server.terminate()
        server.wait(timeout=30)
    # the command is the server (exec): stopping it leaves no Streamlit process behind
    assert subprocess.run(["pgrep", "-f", f"server.port {port} "],
                          capture_output=True).returncode == 1

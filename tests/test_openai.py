"""The OpenAI embeddings backend with the real `openai` client over real HTTP, against the
local stand-in server in tests/openai_server.py (deterministic vectors, scripted faults)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from chatspace.kinds.embed.openai_plan import pack_requests
from chatspace.kinds.openai_api import TokenBucket, retry_after
from chatspace.kinds.tokens import encoding
from chatspace.runs.files import read_json
from tests.helpers import PYDOCS, REPO, chatspace, files_under, open_run, read_run, wait_until
from tests.openai_server import FAULTS, POISON, FakeOpenAI, vector_for

DIM = 64


def submit(root: Path, server: FakeOpenAI, *extra: str, data: Path = PYDOCS, n: int = 90,
           env: dict | None = None) -> subprocess.CompletedProcess:
    return chatspace("submit", "embed", "--backend", "openai", "--dataset", str(data),
                     "--text-field", "text", "--n", str(n), "--seed", "3", "--execute",
                     *extra, root=root, env={**server.env(), **(env or {})})


def run_of(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stderr[-3000:]
    return open_run(json.loads(result.stdout)["run_dir"])


def assert_vectors_are_the_servers(table) -> None:
    vectors = table.column("embedding").to_numpy(zero_copy_only=False)
    for text, vector in zip(table.column("text").to_pylist(), vectors, strict=True):
        assert np.array_equal(np.asarray(vector, np.float32), vector_for(text, DIM)), text[:60]


def test_local_run_verifies_and_vectors_are_the_servers(root):
    with FakeOpenAI(dim=DIM) as server:
        run = run_of(submit(root, server, "--executor", "local", "--array", "3", "--json"))
    assert chatspace("verify", str(run.dir)).returncode == 0
    table = read_run(run)
    assert table.num_rows == 90 and len(set(table.column("id").to_pylist())) == 90
    assert set(table.column("model").to_pylist()) == {"text-embedding-3-small"}
    assert_vectors_are_the_servers(table)
    manifest = read_json(run.manifest_path)
    billed = sum(e["tokens"] for e in server.ok_requests())
    assert manifest["totals"]["tokens"] == billed > 0
    assert manifest["totals"]["cost_usd"] == pytest.approx(billed * 0.02 / 1e6)
    assert manifest["backend"] == "openai" and manifest["embedding_dim"] == DIM
    assert all(e["headers"]["authorization"] == f"Bearer {server.key}" for e in server.log)


def test_faults_on_30_percent_of_requests_lose_nothing(root):
    def fault(n: int) -> str | None:  # every third request, each kind in turn
        return FAULTS[(n // 3) % len(FAULTS)] if n % 3 == 0 else None

    with FakeOpenAI(dim=DIM, fault=fault, slow_seconds=5.0) as server:
        run = run_of(submit(root, server, "--executor", "local", "--array", "2", "--n", "150",
                            "--part-rows", "25", "--max-inputs-per-request", "5", "--json",
                            env={"OPENAI_TIMEOUT": "3"}))
    faulty = [e for e in server.log if e["fault"] is not None]
    assert {e["fault"] for e in faulty} == set(FAULTS)
    assert 0.25 <= len(faulty) / len(server.log) <= 0.4
    assert chatspace("verify", str(run.dir)).returncode == 0
    table = read_run(run)
    sample = np.load(run.dir / "sample.npy")
    ids = table.column("id").to_pylist()
    assert sorted(ids) == sorted(f"pydocs:{r}" for r in sample.tolist())  # none lost or twice
    assert_vectors_are_the_servers(table)
    failed = [e for e in faulty if e["fault"] != "shuffle"]  # a shuffled index is no failure
    assert read_json(run.manifest_path)["totals"]["retries"] == len(failed)


def test_killed_task_requests_only_missing_parts(root):
    with FakeOpenAI(dim=DIM, latency=0.3) as server:
        planned = chatspace("plan", "embed", "--backend", "openai", "--dataset", str(PYDOCS),
                            "--text-field", "text", "--n", "120", "--seed", "3", "--execute",
                            "--part-rows", "10", "--max-in-flight", "1", "--json", root=root,
                            env=server.env())
        run = run_of(planned)
        proc = subprocess.Popen([sys.executable, "-m", "chatspace", "run", "task", str(run.dir),
                                 "--task", "0"], cwd=REPO, env={**os.environ, **server.env()},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: len(list(run.parts_dir(0).glob("part-*.json"))) >= 3, timeout=120,
                   what="three committed parts")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        committed = {json.loads(p.read_text())["part"] for p in run.parts_dir(0).glob("*.json")}
        before = len(server.log)
        rerun = chatspace("run", "task", str(run.dir), "--task", "0", env=server.env())
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert f"resuming, {len(committed)} of 12 parts" in rerun.stderr
        sent_again = [t for e in server.log[before:] for t in e["inputs"]]
    texts = [json.loads(line)["text"] for line in PYDOCS.read_text().splitlines()]
    sample = np.load(run.dir / "sample.npy")
    done_texts = {texts[r] for p in committed for r in sample[p * 10:(p + 1) * 10]}
    assert sent_again and not done_texts & set(sent_again)
    assert len(sent_again) == 120 - 10 * len(committed)
    table = pq.read_table(run.output_paths(0)["shard"])
    assert table.num_rows == 120
    assert_vectors_are_the_servers(table)


def test_a_rejected_row_is_skipped_alone(root, tmp_path):
    rows = [json.loads(line) for line in PYDOCS.read_text().splitlines()[:40]]
    rows[13]["text"] = f"{rows[13]['text']} {POISON}"
    data = tmp_path / "poisoned.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with FakeOpenAI(dim=DIM) as server:
        run = run_of(submit(root, server, "--executor", "debug", "--json", data=data, n=40))
    manifest = read_json(run.manifest_path)
    assert manifest["rows_total"] == 39
    assert manifest["rows_skipped"] == {"total": 1, "reasons": {"rejected": 1}}
    record = read_json(run.completion_path(0))
    assert [s["id"] for s in record["skipped_rows"]] == ["poisoned:13"]
    assert sum(e["status"] == 400 for e in server.log) >= 2  # bisected down to one input


def test_quota_exhausted_exits_1_and_keeps_parts(root):
    with FakeOpenAI(dim=DIM, fault=lambda n: "quota" if n > 3 else None) as server:
        result = submit(root, server, "--executor", "debug", "--part-rows", "10",
                        "--max-in-flight", "1")
    assert result.returncode == 1
    error = [line for line in result.stderr.splitlines() if "insufficient quota" in line]
    assert len(error) == 1 and "committed parts are kept" in error[0]
    parts = list((root / "runs").glob("*/parts/task-00000/part-*.json"))
    assert len(parts) == 3


def test_wrong_key_or_model_exits_2_with_one_line_before_anything_is_written(root):
    """Checked when planned, by one free GET /models/{model}: no embedding is requested and
    nothing is written."""
    with FakeOpenAI(dim=DIM) as server:
        wrong_key = submit(root, server, "--executor", "debug", env={"OPENAI_API_KEY": "sk-bad"})
        wrong_model = submit(root, server, "--executor", "debug", "--model", "text-embed-4")
    assert [status for _, status in server.checks] == [401, 404] and server.log == []
    assert files_under(root) == []
    for result, message in ((wrong_key, "OpenAI rejected the API key (401)"),
                            (wrong_model, "model.name: OpenAI does not serve 'text-embed-4'")):
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith(f"chatspace: error: {message}"), lines
        assert not [line for line in lines if "Traceback" in line]


def test_a_key_revoked_mid_run_fails_the_task_and_keeps_its_parts(root):
    """A task that has committed parts is not bad input: exit 1, its own message, the parts
    kept for `resume` (with a key that works again)."""
    with FakeOpenAI(dim=DIM, fault=lambda n: "revoked" if n == 4 else None) as server:
        result = submit(root, server, "--executor", "debug", "--part-rows", "10",
                        "--max-in-flight", "1")
        assert result.returncode == 1
        error = [line for line in result.stderr.splitlines() if "rejected the API key" in line]
        assert len(error) == 1 and "(401)" in error[0] and "committed parts are kept" in error[0]
        assert len(list((root / "runs").glob("*/parts/task-00000/part-*.json"))) == 3
        server.revoked, before = False, len(server.ok_requests())  # a key that works again
        resumed = chatspace("resume", str(next((root / "runs").glob("*/"))), root=root,
                            env=server.env())
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert len(server.ok_requests()) - before == 6  # the 6 parts not committed before


def test_dry_run_counts_tokens_exactly_and_sends_nothing(root):
    texts = [json.loads(line)["text"] for line in PYDOCS.read_text().splitlines()]
    with FakeOpenAI(dim=DIM) as server:
        result = chatspace("embed-dataset", "--dataset", str(PYDOCS), "--p", "1", "--json",
                           root=root, env={"OPENAI_BASE_URL": server.url})
        assert result.returncode == 0, result.stderr
        assert server.log == []
    tokens = sum(len(t) for t in encoding().encode_ordinary_batch(texts))
    estimate = "\n".join(json.loads(result.stdout)["estimate"])
    assert f"tokens: {tokens:,} in " in estimate
    assert f"${tokens * 0.02 / 1e6:,.4f} standard" in estimate
    assert f"${tokens * 0.01 / 1e6:,.4f} with the Batch API" in estimate
    assert files_under(root) == []


def test_execute_without_a_key_is_exit_2_and_writes_nothing(root):
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    result = subprocess.run([sys.executable, "-m", "chatspace", "embed-dataset", "--dataset",
                             str(PYDOCS), "--n", "5", "--execute", "--root", str(root)],
                            capture_output=True, text=True, cwd=root.parent, env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == ("chatspace: error: OPENAI_API_KEY is not set "
                                     "(environment or ./.env): needed with --execute")
    assert files_under(root) == []


@pytest.mark.parametrize("source", ["environment", "dotenv"])
def test_the_api_key_is_written_nowhere(root, tmp_path, source):
    with FakeOpenAI(dim=DIM, key="sk-SECRET-" + source) as server:
        env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
        env.update(OPENAI_BASE_URL=server.url, PYTHONPATH=str(REPO))
        if source == "environment":
            env["OPENAI_API_KEY"] = server.key
        else:
            (tmp_path / ".env").write_text(f"OPENAI_API_KEY='{server.key}'\n")
        result = subprocess.run(
            [sys.executable, "-m", "chatspace", "-v", "submit", "embed", "--backend", "openai",
             "--dataset", str(PYDOCS), "--text-field", "text", "--n", "30", "--array", "2",
             "--executor", "local", "--execute", "--root", str(root)],
            capture_output=True, text=True, cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        assert len(server.ok_requests()) >= 2
    assert server.key not in result.stdout + result.stderr
    files = files_under(root)
    assert any(f.name == "manifest.json" for f in files) and any(".log" in f.name for f in files)
    for path in files:
        assert server.key.encode() not in path.read_bytes(), path


def test_long_inputs_are_truncated_or_chunked(root, tmp_path):
    words = " ".join(PYDOCS.read_text().split())
    enc = encoding()
    long_text = enc.decode(enc.encode_ordinary(words)[:20000])
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"text": long_text}) + "\n" + json.dumps({"text": "short"}) + "\n")
    ids = enc.encode(long_text, disallowed_special=())
    with FakeOpenAI(dim=DIM) as server:
        cut = read_run(run_of(submit(root, server, "--executor", "debug", "--json", data=data,
                                     n=2)))
        chunked = read_run(run_of(submit(root / "c", server, "--executor", "debug", "--json",
                                         "--long-inputs", "chunk", data=data, n=2)))
    meta = json.loads(cut.column("metadata")[0].as_py())
    assert meta["truncated"] and meta["tokens"] == len(ids) and meta["tokens_embedded"] == 8191
    assert np.array_equal(np.asarray(cut.column("embedding")[0].as_py(), np.float32),
                          vector_for(ids[:8191], DIM))
    chunks = [ids[i:i + 8191] for i in range(0, len(ids), 8191)]
    mean = sum(vector_for(c, DIM).astype(np.float64) * len(c) for c in chunks) / len(ids)
    expected = mean / np.linalg.norm(mean)
    got = np.asarray(chunked.column("embedding")[0].as_py())
    assert json.loads(chunked.column("metadata")[0].as_py())["chunks"] == len(chunks) == 3
    assert np.allclose(got, expected, atol=1e-6)


def test_request_packing_and_rate_helpers():
    assert pack_requests([5, 5, 5, 5, 5], 2, 100) == [[0, 1], [2, 3], [4]]
    assert pack_requests([60, 50, 40, 10], 10, 100) == [[0], [1, 2, 3]]
    assert retry_after({"retry-after-ms": "250"}) == 0.25
    assert retry_after({"retry-after": "3"}) == 3.0
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    bucket = TokenBucket(6000)  # 100/s, 100 banked
    assert bucket.capacity == 100
    bucket.drain(2.0)
    assert bucket.level == pytest.approx(-200, abs=1)


@pytest.mark.slurm
def test_slurm_run_with_the_api(root, slurm_cluster):
    with FakeOpenAI(dim=DIM, fault=lambda n: "503" if n % 5 == 0 else None) as server:
        run = run_of(submit(root, server, "--executor", "slurm", "--array", "3", "--wait",
                            "--max-inputs-per-request", "5", "--json"))
        assert any(e["status"] == 503 for e in server.log)
    assert chatspace("verify", str(run.dir)).returncode == 0
    table = read_run(run)
    assert table.num_rows == 90
    assert_vectors_are_the_servers(table)

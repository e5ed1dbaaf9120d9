"""Downloads from the Hub on a login node, through the real `huggingface_hub` client over real
HTTP to a local stand-in (tests/hub_server.py, reached through HF_ENDPOINT): a model repo and a
Parquet dataset repo, a connection dropped mid-file that the client resumes with a Range
request, a gated repo (401 without a token), an unknown repo (404), no network. The downloaded
model then runs in `submit steer` and `chat`, the dataset in `submit embed`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from chatspace.runs.files import sha256_file
from tests.helpers import PYDOCS, REPO, chatspace, files_under
from tests.hub_server import FakeHub, Repo, files_of

BIG_FILE = "data/train-00000-of-00001.parquet"


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="none")
    return sink.getvalue().to_pybytes()


@pytest.fixture(scope="module")
def hub(tiny_model_dir):
    """The stand-in Hub: a model, a gated copy of it, and a dataset whose train file (32 MB:
    half of it is over the client's 10 MiB read chunk) is cut short once."""
    rows = [json.loads(line) for line in PYDOCS.read_text().splitlines()]
    size = 16_000
    noise = np.random.default_rng(0).bytes(size * len(rows))
    train = pa.table({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows],
                      "blob": [noise[i * size:(i + 1) * size] for i in range(len(rows))]})
    test = train.slice(0, 30).drop_columns(["blob"]).append_column(
        "blob", pa.array([b""] * 30, pa.binary()))
    model = files_of(tiny_model_dir("qwen2"))
    repos = {"testorg/tiny-qwen": Repo(model),
             "testorg/locked": Repo(model, gated=True),
             "testorg/hubdocs": Repo({BIG_FILE: parquet_bytes(train),
                                      "data/test-00000-of-00001.parquet": parquet_bytes(test),
                                      "README.md": b"# hubdocs\n"}, kind="datasets")}
    small = {"config.json": b"{}", "model.safetensors": b"x" * 64}
    repos.update({
        # a repo sha that climbs to another run's plan; a 404 whose commit climbs out of the
        # cache; a listing whose names climb; HTML for JSON; 403, 502; no answer at all
        "testorg/climbing-sha": Repo(small, sha="../../../../victim/runs/R1/plan"),
        "testorg/climbing-404": Repo(small, listed=("tokenizer.json",),
                                     missing_commit="../../../../../../victim/no-exist"),
        "testorg/climbing-list": Repo(small, listed=("../../../../victim/listed.json",)),
        "testorg/html": Repo(small, fault="html"),
        "testorg/forbidden": Repo(small, fault="403"),
        "testorg/bad-gateway": Repo(small, fault="502"),
        "testorg/silent": Repo(small, fault="silent"),
    })
    with FakeHub(repos, drop_once={f"testorg/hubdocs/{BIG_FILE}"}) as server:
        yield server


def run(*args: str, hub: FakeHub, home: Path, token: bool = False, **kwargs):
    return chatspace(*args, env={**hub.env(token), "HF_HOME": str(home)}, **kwargs)


def one_line(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr[-2000:]


def test_a_hub_model_is_recorded_and_runs_in_steer_and_chat(hub, tmp_path, tiny_model_dir):
    root, home = tmp_path / "ws", tmp_path / "hf"
    got = run("download-model", "testorg/tiny-qwen", "--json", hub=hub, home=home, root=root)
    assert got.returncode == 0, got.stderr[-2000:]
    info = json.loads(got.stdout)
    assert info["commit"] == hub.repos["testorg/tiny-qwen"].commit
    dest = root / "models" / "testorg__tiny-qwen"
    source = tiny_model_dir("qwen2")
    for entry in info["files"]:
        assert entry["sha256"] == sha256_file(dest / entry["path"]) == \
            sha256_file(source / entry["path"])
    assert {e["path"] for e in info["files"]} >= {"config.json", "model.safetensors",
                                                  "tokenizer.json"}
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["How do lists work?"]))
    steer = chatspace("submit", "steer", "--model", "testorg/tiny-qwen", "--backend", "hf",
                      "--prompts-json", str(prompts), "--max-tokens", "4", "--executor",
                      "debug", "--json", root=root)
    assert steer.returncode == 0, steer.stderr[-2000:]
    chat = subprocess.run([sys.executable, "-m", "chatspace", "chat", "testorg/tiny-qwen",
                           "--root", str(root), "--no-thinking", "--max-tokens", "4"],
                          input="Hello\n", capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert chat.returncode == 0 and chat.stdout.count("assistant> ") == 1, chat.stderr[-2000:]
    # the original spelling, and only the files asked for
    only = run("download-model", "--repo-id", "testorg/tiny-qwen", "--include", "*.json",
               "--json", hub=hub, home=home, root=tmp_path / "ws2")
    assert only.returncode == 0, only.stderr[-2000:]
    assert all(e["path"].endswith(".json") for e in json.loads(only.stdout)["files"])


def test_hub_errors_are_one_line(hub, tmp_path):
    root, home = tmp_path / "ws", tmp_path / "hf"
    one_line(run("download-model", "testorg/locked", hub=hub, home=home, root=root),
             "is gated: set HF_TOKEN")
    one_line(run("download-model", "testorg/nope", hub=hub, home=home, root=root),
             f"no model 'testorg/nope' on {hub.url}")
    one_line(run("download-dataset", "testorg/nope", hub=hub, home=home, root=root),
             f"no dataset 'testorg/nope' on {hub.url}")
    one_line(chatspace("download-model", "testorg/tiny-qwen", root=root,
                       env={**hub.env(), "HF_HOME": str(home),
                            "HF_ENDPOINT": "http://127.0.0.1:9"}),
             "cannot reach http://127.0.0.1:9 (no network?)")
    assert files_under(root) == []
    granted = run("download-model", "testorg/locked", hub=hub, home=home, token=True,
                  root=root)
    assert granted.returncode == 0, granted.stderr[-2000:]
    assert all(e["auth"] == f"Bearer {hub.token}" for e in hub.log
               if "testorg/locked" in e["path"] and e["method"] == "GET"
               and "/resolve/" in e["path"])


def test_a_hub_dataset_resumes_a_dropped_file_and_embeds(hub, tmp_path):
    root, home = tmp_path / "ws", tmp_path / "hf"
    one_line(run("download-dataset", "testorg/hubdocs", hub=hub, home=home, root=root),
             "has splits test, train: choose one with --split")
    got = run("download-dataset", "--name", "testorg/hubdocs", "--split", "train", "--json",
              hub=hub, home=home, root=root)
    assert got.returncode == 0, got.stderr[-2000:]
    ranges = [e["range"] for e in hub.log if e["path"].endswith(BIG_FILE) and e["range"]]
    assert ranges and int(ranges[0].split("=")[1].rstrip("-")) > 0, "resumed, not restarted"
    info = json.loads(got.stdout)
    assert info["rows"] == 2000 and info["commit"] == hub.repos["testorg/hubdocs"].commit
    dest = Path(info["path"])
    assert dest == root / "datasets" / "raw" / "hf" / "testorg__hubdocs" / "train"
    assert all(f["sha256"] == sha256_file(dest / f["path"]) for f in info["files"])
    embed = chatspace("submit", "embed", "--dataset", str(dest), "--text-field", "text",
                      "--n", "20", "--executor", "debug", "--json", root=root)
    assert embed.returncode == 0, embed.stderr[-2000:]
    manifest = json.loads(Path(json.loads(embed.stdout)["manifest"]).read_text())
    assert manifest["rows_total"] == 20


def test_a_hostile_mirror_writes_nothing_outside_and_every_answer_is_one_line(hub, tmp_path):
    """Phase 17: no string a server sends (repo sha, X-Repo-Commit, listed names) and no
    --revision becomes a path unchecked; every bad answer is one line; none hangs."""
    root, home = tmp_path / "ws", tmp_path / "hf"
    victim = tmp_path / "victim"
    (victim / "runs" / "R1").mkdir(parents=True)
    plan = victim / "runs" / "R1" / "plan.json"
    plan.write_text('{"mine": true}')
    home.mkdir()
    os.symlink(victim, home / "victim")  # what a climbing name would reach, and beside it
    before = files_under(tmp_path)
    one_line(run("download-model", "testorg/climbing-sha", hub=hub, home=home, root=root),
             "which is not 40 hex digits: refused")
    one_line(run("download-model", "testorg/climbing-404", "--include", "*.json", hub=hub,
                 home=home, root=root), "which is not 40 hex digits: refused")
    one_line(run("download-model", "testorg/climbing-list", hub=hub, home=home, root=root),
             "is not a relative path of plain names")
    for revision in ("../../../../victim/rev", "/abs", "main/../../x", "a\nb"):
        for command in ("download-model", "download-dataset"):
            one_line(run(command, "testorg/tiny-qwen", "--revision", revision, hub=hub,
                         home=home, root=root), "--revision")
    one_line(run("download-model", "testorg/html", hub=hub, home=home, root=root),
             "sent an answer that is not the Hub's")
    one_line(run("download-model", "testorg/forbidden", hub=hub, home=home, root=root),
             "answered HTTP 403")
    one_line(run("download-dataset", "testorg/bad-gateway", hub=hub, home=home, root=root),
             "answered HTTP 502")
    silent = chatspace("download-model", "testorg/silent", root=root, timeout=60,
                       env={**hub.env(), "HF_HOME": str(home), "HF_HUB_DOWNLOAD_TIMEOUT": "2"})
    one_line(silent, "did not answer within 2 s")
    assert plan.read_text() == '{"mine": true}'
    assert files_under(victim) == [plan]
    assert [p for p in files_under(tmp_path) if p not in before
            and not p.is_relative_to(home / "hub")] == []
    assert files_under(root) == []
    # a commit given as --revision is used as it is; the recorded model follows the umask
    commit = hub.repos["testorg/tiny-qwen"].commit
    old = os.umask(0o002)
    try:
        got = run("download-model", "testorg/tiny-qwen", "--revision", commit, "--json",
                  hub=hub, home=home, root=root)
    finally:
        os.umask(old)
    assert got.returncode == 0, got.stderr[-2000:]
    recorded = Path(json.loads(got.stdout)["path"])
    assert json.loads(got.stdout)["commit"] == commit
    assert recorded.stat().st_mode & 0o777 == 0o775

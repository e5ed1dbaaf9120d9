"""The embedding spine end to end with the real bundled model and real Parquet files."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from chatspace.kinds.embed.schema import shard_schema
from chatspace.kinds.embed.st_model import Encoder
from chatspace.runs.files import read_json, sha256_file
from chatspace.runs.reduce import reduce_run, verify_run
from chatspace.runs.task import run_task as run_embed_task
from tests.helpers import PYDOCS, REPO, chatspace, embed, plan, read_run, shard, wait_until


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def vectors(table) -> np.ndarray:
    return np.stack(table.column("embedding").to_numpy(zero_copy_only=False))


def test_embeddings_equal_sentence_transformer_encode(root, small_jsonl, st_model):
    run = embed(root, small_jsonl, n=120, array=2, run={"part_rows": 50},
                model={"batch_size": 16})
    table = read_run(run)
    assert table.schema.equals(shard_schema(384), check_metadata=False)
    reference = st_model.encode(table.column("text").to_pylist(), batch_size=32)
    assert cosines(vectors(table), reference).min() >= 0.9999
    manifest = read_json(run.manifest_path)
    assert manifest["rows_total"] == table.num_rows == 116
    assert manifest["rows_skipped"] == {"total": 4, "reasons": {"empty": 2, "null": 1,
                                                                "non-string": 1}}
    assert manifest["embedding_dim"] == 384 and len(manifest["shards"]) == 2
    meta = json.loads(table.column("metadata")[0].as_py())
    assert meta["max_seq_length"] == 256 and meta["field"] == "text"
    assert len(set(table.column("id").to_pylist())) == table.num_rows
    assert table.column("run_id")[0].as_py() == run.run_id


def test_long_texts_are_truncated_and_recorded(root, tmp_path, st_model):
    long_text = " ".join(PYDOCS.read_text().split()[:2000])
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"text": long_text}) + "\n" + json.dumps({"text": "short"}) + "\n")
    table = read_run(embed(root, data, n=2, array=1))
    metas = [json.loads(m) for m in table.column("metadata").to_pylist()]
    assert [m["truncated"] for m in metas] == [True, False]
    assert metas[0]["tokens"] == 256
    reference = st_model.encode(table.column("text").to_pylist())
    assert cosines(vectors(table), reference).min() >= 0.9999


def test_rerun_gives_byte_identical_shard(root):
    run = embed(root, PYDOCS, n=80, array=2)
    before = [sha256_file(shard(run, t)) for t in range(2)]
    record_mtime = run.completion_path(0).stat().st_mtime
    run_embed_task(run, 0)  # complete: a no-op
    assert run.completion_path(0).stat().st_mtime == record_mtime
    for t in range(2):
        run.completion_path(t).unlink()
        shard(run, t).unlink()
        run_embed_task(run, t)
    assert [sha256_file(shard(run, t)) for t in range(2)] == before


def test_two_plans_of_one_spec_give_the_same_rows(root):
    first = read_run(embed(root, PYDOCS, "first", n=50)).drop(["run_id", "created_at"])
    second = read_run(embed(root, PYDOCS, "second", n=50)).drop(["run_id", "created_at"])
    assert first.equals(second)


def test_array_size_changes_neither_rows_nor_vectors(root):
    one = read_run(embed(root, PYDOCS, "one", n=90, array=1))
    three = read_run(embed(root, PYDOCS, "three", n=90, array=3))
    assert one.column("id").to_pylist() == three.column("id").to_pylist()
    assert cosines(vectors(one), vectors(three)).min() >= 0.99999


def test_same_run_id_and_spec_reuses_the_plan(root):
    run = plan(root, PYDOCS, "again", n=20)
    assert plan(root, PYDOCS, "again", n=20).plan.created_at == run.plan.created_at


def test_sigkill_midway_resumes_from_last_part(root):
    run = plan(root, PYDOCS, "killed", n=400, array=1, run={"part_rows": 40},
               model={"batch_size": 8})
    log = root / "task.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "chatspace", "run", "task",
                                 str(run.dir), "--task", "0"], stdout=out, stderr=out, cwd=REPO)
    parts_dir = run.parts_dir(0)

    def two_parts() -> bool:
        assert proc.poll() is None, log.read_text()
        return len(list(parts_dir.glob("part-*.json"))) >= 2

    wait_until(two_parts, poll=0.05, what="two committed parts")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = len(list(parts_dir.glob("part-*.json")))
    assert 2 <= committed < 10, "the task should have been killed half-way"
    partial = json.loads(chatspace("status", str(run.dir), "--json").stdout)
    assert partial["tasks"][0]["state"] == "partial"
    assert partial["tasks"][0]["rows_done"] == partial["rows_done"] == 40 * committed
    assert not shard(run, 0).exists() and not run.completion_path(0).exists()

    stale = shard(run, 0).parent / f".tmp-99999-{shard(run, 0).name}"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"PAR1 half a shard from a killed assembly")

    resumed = chatspace("run", "task", str(run.dir), "--task", "0")
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(p.name for p in shard(run, 0).parent.iterdir()) == ["shard-00000.parquet"]
    assert f"resuming, {committed} of 10 parts already committed" in resumed.stderr
    reduce_run(run)
    killed_manifest = read_json(run.manifest_path)

    fresh = embed(root, PYDOCS, "uninterrupted", n=400, array=1, run={"part_rows": 40},
                  model={"batch_size": 8})
    fresh_manifest = read_json(fresh.manifest_path)
    recorded = read_json(run.completion_path(0))["outputs"][0]
    assert recorded["sha256"] == sha256_file(shard(run, 0)) and recorded["rows"] == 400
    assert pq.read_table(shard(run, 0)).drop(
        ["run_id", "created_at"]).equals(pq.read_table(shard(fresh, 0)).drop(
            ["run_id", "created_at"]))
    ignore = {"run_id", "created_at", "shards", "files", "totals", "run_config", "tool"}
    assert {k: v for k, v in killed_manifest.items() if k not in ignore} == \
        {k: v for k, v in fresh_manifest.items() if k not in ignore}
    assert killed_manifest["totals"]["tokens"] == fresh_manifest["totals"]["tokens"]


def test_killed_task_shard_matches_its_own_uninterrupted_rerun(root):
    run = plan(root, PYDOCS, "same-plan", n=120, array=1, run={"part_rows": 30})
    proc = subprocess.Popen([sys.executable, "-m", "chatspace", "run", "task",
                             str(run.dir), "--task", "0"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=REPO)
    wait_until(lambda: list(run.parts_dir(0).glob("part-*.json")), poll=0.05,
               what="a committed part")
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    assert run.completion(0) is None, "the kill must land before the task finished"
    run_embed_task(run, 0)
    interrupted = sha256_file(shard(run, 0))
    run.completion_path(0).unlink()
    shard(run, 0).unlink()
    run_embed_task(run, 0)
    assert sha256_file(shard(run, 0)) == interrupted


def test_reduce_names_deleted_and_corrupted_shards(root):
    run = embed(root, PYDOCS, n=60, array=3)
    shard(run, 0).unlink()
    data = bytearray(shard(run, 2).read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard(run, 2).write_bytes(bytes(data))
    result = chatspace("run", "reduce", str(run.dir))
    assert result.returncode == 1
    assert "task 0:" in result.stderr and "task 2:" in result.stderr
    assert "task 1:" not in result.stderr


def test_verify_catches_a_flipped_byte(root):
    run = embed(root, PYDOCS, n=40, array=2)
    assert verify_run(run) == []
    ok = chatspace("verify", str(run.dir), "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"] is True
    data = bytearray(shard(run, 1).read_bytes())
    data[100] ^= 0x01
    shard(run, 1).write_bytes(bytes(data))
    bad = chatspace("verify", str(run.dir), "--json")
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert report["ok"] is False and "task 1" in report["problems"][0]


def test_status_reports_done_and_missing_tasks(root):
    run = embed(root, PYDOCS, n=40, array=2)
    run.completion_path(1).unlink()
    result = chatspace("status", run.run_id, "--json", root=root)
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout)
    assert state["run_id"] == run.run_id and state["run_dir"] == str(run.dir)
    assert [t["state"] for t in state["tasks"]] == ["done", "missing"]


@pytest.mark.parametrize("executor", ["local", "debug"])
def test_submit_cli_end_to_end(root, executor):
    result = chatspace("submit", "embed", "--dataset", str(PYDOCS), "--text-field", "text",
                       "--n", "40", "--array", "2", "--executor", executor, "--json",
                       "--run-id", f"cli-{executor}", root=root)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert Path(out["manifest"]).exists() and out["run_id"] == f"cli-{executor}"
    assert read_json(Path(out["manifest"]))["rows_total"] == 40


def test_local_and_debug_executors_write_identical_shards(root):
    run = plan(root, PYDOCS, "cross", n=60, array=2)
    result = chatspace("submit", "embed", "--dataset", str(PYDOCS), "--text-field", "text",
                       "--n", "60", "--seed", "1", "--array", "2", "--executor", "local",
                       "--run-id", "cross", root=root)
    assert result.returncode == 0, result.stderr
    local = [sha256_file(shard(run, t)) for t in range(2)]
    for t in range(2):
        run.completion_path(t).unlink()
        shard(run, t).unlink()
        run_embed_task(run, t)
    assert [sha256_file(shard(run, t)) for t in range(2)] == local


def test_embed_hf_is_a_one_process_run(root):
    result = chatspace("embed-hf", "--dataset", str(PYDOCS), "--text-field", "text", "--n",
                       "12", "--json", root=root)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["executor"] == "debug"
    manifest = read_json(Path(out["manifest"]))
    assert manifest["rows_total"] == 12 and len(manifest["shards"]) == 1
    # the original pipeline's way: no --n/--p is every row, --max-rows takes the first N
    head = chatspace("embed-hf", "--dataset", str(PYDOCS), "--text-field", "text",
                     "--max-rows", "7", "--json", root=root)
    assert head.returncode == 0, head.stderr
    shard_path = root / read_json(Path(json.loads(head.stdout)["manifest"]))["shards"][0]["path"]
    ids = pq.read_table(shard_path, columns=["id"]).column("id").to_pylist()
    assert ids == [f"pydocs:{i}" for i in range(7)]


def test_compiled_model_matches_eager(root, monkeypatch):
    """torch.compile path (CPU inductor here): one warm-up per bucket shape, run before any
    batch of that shape, across the task's parts; same vectors."""
    calls: list[tuple[str, tuple[int, int]]] = []  # the real methods run; their shapes noted
    warm_up, encode_batch = Encoder.warm_up, Encoder.encode_batch

    def noted_warm_up(self, rows, pad_to):
        calls.append(("warm", (rows, pad_to)))
        return warm_up(self, rows, pad_to)

    def noted_encode(self, ids, pad_to, rows_to=None):
        calls.append(("encode", (rows_to or len(ids), pad_to)))
        return encode_batch(self, ids, pad_to, rows_to)

    monkeypatch.setattr(Encoder, "warm_up", noted_warm_up)
    monkeypatch.setattr(Encoder, "encode_batch", noted_encode)
    compiled = embed(root, PYDOCS, "compiled", n=48, array=1, run={"part_rows": 16},
                     model={"compile": True, "batch_size": 8, "bucket_max_tokens": 64})
    monkeypatch.undo()
    warmed = [shape for what, shape in calls if what == "warm"]
    encoded = [shape for what, shape in calls if what == "encode"]
    assert warmed and len(warmed) == len(set(warmed)), "one warm-up per shape"
    # the warm-up's own batch is an encode_batch too; every real batch's shape was warmed first
    for i, (what, shape) in enumerate(calls):
        if what == "encode":
            assert ("warm", shape) in calls[:i]
    assert set(warmed) == set(encoded) and len(encoded) > len(warmed)
    eager = embed(root, PYDOCS, "eager", n=48, array=1, model={"batch_size": 8})
    assert cosines(vectors(read_run(compiled)), vectors(read_run(eager))).min() >= 0.9999
    record = read_json(compiled.completion_path(0))
    assert record["timings"]["compile_warmup"]["busy"] > 0
    # every compiled batch is a full 8 rows of a power-of-two bucket length
    assert record["padded_tokens"] % 8 == 0 and record["padded_tokens"] > record["tokens"]


def test_a_done_task_whose_output_is_gone_is_lost_and_resume_reruns_only_it(root):
    run = embed(root, PYDOCS, "lost", n=90, array=3)
    sums = [sha256_file(shard(run, t)) for t in range(3)]
    shard(run, 1).unlink()
    with open(shard(run, 2), "ab") as fh:  # same name, other size
        fh.write(b"x")
    status = json.loads(chatspace("status", str(run.dir), "--json").stdout)
    assert status["counts"] == {"done": 1, "lost": 2}
    assert [t["state"] for t in status["tasks"]] == ["done", "lost", "lost"]
    assert "is missing" in status["tasks"][1]["error"][0]
    assert "bytes, its record says" in status["tasks"][2]["error"][0]
    assert status["rows_done"] == 30
    assert chatspace("verify", str(run.dir)).returncode == 1
    resumed = chatspace("resume", str(run.dir), "--executor", "debug", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["submission"]["tasks"] == [1, 2]
    assert [sha256_file(shard(run, t)) for t in range(3)] == sums
    assert chatspace("verify", str(run.dir)).returncode == 0


def test_local_executor_gives_each_worker_its_own_gpu(root):
    result = chatspace("submit", "embed", "--dataset", str(PYDOCS), "--text-field", "text",
                       "--n", "40", "--array", "3", "--executor", "local", "--device", "cpu",
                       "--json", root=root, env={"CUDA_VISIBLE_DEVICES": "5,7"})
    assert result.returncode == 0, result.stderr
    run_dir = Path(json.loads(result.stdout)["run_dir"])
    seen = []
    for task in range(3):
        log = (run_dir / "logs" / f"local-{task:05d}.log").read_text()
        seen.append(re.search(r"starting on \S+ \(python \S+, CUDA_VISIBLE_DEVICES=(\S+)\)",
                              log).group(1))
    assert set(seen) == {"5", "7"}  # two GPUs: two workers, one device each
    assert seen[0] != seen[1]


def test_a_model_that_fails_to_load_in_a_task_is_a_task_failure(root, tmp_path):
    model = tmp_path / "broken-model"
    model.mkdir()
    (model / "config.json").write_text("{not json")
    run = plan(root, PYDOCS, n=10, array=1, model={"name": str(model)})
    result = chatspace("run", "task", str(run.dir), "--task", "0")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"chatspace: error: model {model} does not load:")
    assert not run.completion_path(0).exists()

"""The experiment store: a script logs experiments with save_experiment, and `chatspace query`
lists, summarises, ranks and compares them (real Parquet files, real DuckDB)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from chatspace.experiments import save_experiment
from tests.helpers import REPO, chatspace

SCRIPT = """
import sys
from chatspace.experiments import save_experiment
root = sys.argv[1]
for lr, loss in ((1e-3, 0.52), (3e-4, 0.41), (1e-4, 0.47)):
    path = save_experiment("probe-sweep", config={"lr": lr, "layer": 12},
                           metrics={"loss": loss, "accuracy": 1 - loss}, tags=["probe"],
                           notes=f"lr {lr}", root=root)
    print(path)
"""


def query(root: Path, *args: str) -> list[dict]:
    result = chatspace("query", *args, "--json", root=root)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_script_logs_experiments_and_query_finds_them(tmp_path):
    root = tmp_path / "ws"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(root)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    paths = [Path(line) for line in done.stdout.split()]
    assert len(paths) == 3 and all(p.parent == root / "experiments" / "probe-sweep"
                                   for p in paths)
    row = pq.read_table(paths[0]).to_pylist()[0]
    assert json.loads(row["config"]) == {"layer": 12, "lr": 1e-3}
    assert dict(row["metrics"]) == {"loss": 0.52, "accuracy": 0.48}
    assert row["git_sha"] and row["tags"] == ["probe"] and row["created_at"].tzinfo

    listed = query(root, "--experiments", "--list")
    assert [r["notes"] for r in listed] == ["lr 0.001", "lr 0.0003", "lr 0.0001"]
    summary = query(root, "--experiments", "--summary")
    assert summary[0]["experiments"] == 3 and summary[0]["metrics"] == ["accuracy", "loss"]
    best = query(root, "--experiments", "--best", "loss", "--lowest", "--top", "2")
    assert [b["loss"] for b in best] == [0.41, 0.47]
    ids = [listed[0]["experiment_id"], listed[1]["experiment_id"]]
    compared = {r["field"]: r for r in query(root, "--experiments", "--compare", *ids)}
    assert compared["config.lr"][ids[0]] == 1e-3 and "config.layer" not in compared
    assert compared["metric loss"][ids[1]] == 0.41
    by_sql = query(root, "SELECT count(*) AS n, min(metrics['loss']) AS best FROM experiments")
    assert by_sql == [{"n": 3, "best": 0.41}]
    # a write in progress (a temp file) is not an experiment
    (paths[0].parent / f".tmp-host-1-{paths[0].name}").write_bytes(b"PAR1 torn")
    assert len(query(root, "--experiments", "--list")) == 3


def test_bad_experiments_are_refused_and_nothing_is_written(tmp_path):
    root = tmp_path / "ws"
    with pytest.raises(ValueError, match="name '../up' contains a path separator"):
        save_experiment("../up", {}, {"loss": 1.0}, root=root)
    with pytest.raises(ValueError, match=r"metrics\['loss'\] must be a finite number"):
        save_experiment("x", {}, {"loss": "low"}, root=root)
    with pytest.raises(ValueError, match="config is not JSON"):
        save_experiment("x", {"f": object()}, {}, root=root)
    assert not root.exists()
    empty = chatspace("query", "--experiments", "--best", "loss", root=root)
    assert empty.returncode == 2 and "no experiment logged that metric" in empty.stderr

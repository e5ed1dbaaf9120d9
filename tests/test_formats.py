"""The on-disk contract: typed, versioned records. docs/formats.md is what the record types
say; records of the release before versions (one run of each kind, kept in
tests/data/records-v1, made by that release) still read everywhere; a record of a newer
version is a clear error naming both versions; every record round-trips through its type."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from chatspace.kinds import KINDS
from chatspace.runs.files import read_json
from chatspace.runs.formats import (
    RECORDS,
    Attempt,
    Completion,
    Manifest,
    Plan,
    Submissions,
)
from chatspace.runs.formats_doc import formats_markdown
from chatspace.runs.record import Run
from tests.helpers import REPO, chatspace

FIXTURES = REPO / "tests" / "data" / "records-v1"
RUNS = {"embed-v1": "embed", "steer-v1": "steer", "vectors-v1": "vectors"}


@pytest.fixture
def old_root(tmp_path) -> Path:
    root = tmp_path / "ws"
    shutil.copytree(FIXTURES, root)
    return root


def test_docs_formats_md_is_what_the_record_types_say():
    assert (REPO / "docs" / "formats.md").read_text() == formats_markdown(), \
        "regenerate: python -m chatspace.runs.formats_doc > docs/formats.md"
    for record in RECORDS:
        assert f"— {record.FORMAT}, version {record.VERSION}" in formats_markdown()


def test_records_of_the_previous_release_still_read(old_root):
    for path in (old_root / "runs").rglob("*.json"):
        assert "version" not in read_json(path), f"{path} is not a version 1 record"
    for run_id, kind in RUNS.items():
        status = chatspace("status", run_id, "--json", root=old_root)
        assert status.returncode == 0, status.stderr[-2000:]
        state = json.loads(status.stdout)
        assert state["kind"] == kind and state["manifest"] is not None
        assert {t["state"] for t in state["tasks"]} == {"done"}
        verify = chatspace("verify", run_id, root=old_root)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        report = chatspace("report", run_id, "-o", str(old_root / f"{run_id}.html"),
                           root=old_root)
        assert report.returncode == 0, report.stderr[-2000:]
    listed = chatspace("query", "--list", "--json", root=old_root)
    assert listed.returncode == 0, listed.stderr
    assert {(r["run_id"], r["kind"], r["state"]) for r in json.loads(listed.stdout)} == {
        (run_id, kind, "done") for run_id, kind in RUNS.items()}
    embed = Run.open("embed-v1", old_root, KINDS)
    assert embed.plan.details["model"]["label"] == "all-MiniLM-L6-v2"
    assert embed.completion(0).details["embedding_dim"] == 384
    assert [s.executor for s in embed.submissions()] == ["debug"]
    resumed = chatspace("resume", "embed-v1", root=old_root)
    assert resumed.returncode == 0 and "nothing to do" in resumed.stderr


def test_a_record_of_a_newer_version_is_a_clear_error(old_root):
    plan = old_root / "runs" / "embed-v1" / "plan.json"
    plan.write_text(json.dumps({**read_json(plan), "format": "chatspace-plan",
                                "version": 99}))
    status = chatspace("status", "embed-v1", root=old_root)
    assert status.returncode == 1
    assert status.stderr.strip().splitlines()[-1].endswith(
        "is chatspace-plan version 99; this chatspace reads up to version 2: upgrade "
        "chatspace to read it")
    listed = chatspace("query", "--list", "--json", root=old_root)  # the others still list
    assert listed.returncode == 0 and "version 99" in listed.stderr
    assert {r["run_id"] for r in json.loads(listed.stdout)} == {"steer-v1", "vectors-v1"}


def test_every_record_round_trips_through_its_type(old_root):
    types = {"plan.json": Plan, "submissions.json": Submissions}
    for path in sorted((old_root / "runs").rglob("*.json")):
        cls = types.get(path.name) or (Completion if path.parent.name == "tasks" else
                                       Attempt if "attempts" in path.parts else None)
        if cls is None:
            continue
        record = cls.parse(read_json(path), path)
        assert cls.parse(record.to_dict(), path) == record
        assert record.to_dict()["version"] == cls.VERSION
    for run_id in RUNS:
        run = Run.open(run_id, old_root, KINDS)
        manifest = Manifest.parse(read_json(run.manifest_path), run.manifest_path)
        assert Manifest.parse(manifest.to_dict()) == manifest
        assert {e.task for e in manifest.files} >= set(range(run.num_tasks))
    embed = Manifest.parse(read_json(Run.open("embed-v1", old_root, KINDS).manifest_path))
    assert embed.details["rows_total"] == 6 and embed.kind == "embed"  # the job's summary


def test_recordings_and_tagged_files_of_the_previous_release_still_read(old_root, tmp_path):
    """`_info.json` of download-model / download-dataset and a saved steering spec, as the
    release before their versions wrote them (21f7b7a), read as version 1 and are replaced by
    version 2 recordings; every tagged file chatspace writes carries its format and version."""
    from safetensors import safe_open

    from chatspace.experiments import save_experiment
    from chatspace.kinds.vectors.compute import Vector, write_vectors
    from chatspace.models import find_model
    from chatspace.runs.formats import (
        EXPERIMENT_FORMAT,
        STEERING_FORMAT,
        VECTORS_FORMAT,
        DatasetInfo,
        ModelInfo,
    )
    from chatspace.steering import spec as steering

    model_info = ModelInfo.path_in(old_root, label="model")
    dataset_info = DatasetInfo.path_in(old_root, source="local", dataset="data", split="")
    for cls, path in ((ModelInfo, model_info), (DatasetInfo, dataset_info)):
        assert "version" not in read_json(path), f"{path} is not a version 1 recording"
        record = cls.parse(read_json(path), path)
        assert cls.parse(record.to_dict(), path) == record
        assert record.to_dict()["version"] == 2 and "from" not in record.to_dict()
    assert ModelInfo.parse(read_json(model_info)).copied_from == "/tmp/v1src/model"
    dataset = DatasetInfo.parse(read_json(dataset_info))
    assert dataset.rows == 2 and dataset.files[0].copied_from == "/tmp/v1src/data/docs.parquet"
    assert find_model("model", old_root).path == str(model_info.parent)

    source = tmp_path / "model"
    shutil.copytree(model_info.parent, source)
    again = chatspace("download-model", str(source), root=old_root)  # replaces the v1 one
    assert again.returncode == 0, again.stderr
    assert ModelInfo.parse(read_json(model_info)).copied_from == str(source)

    assert (STEERING_FORMAT.format, STEERING_FORMAT.version) == (steering.FORMAT,
                                                                 steering.VERSION)
    old_spec = old_root / "spec-v1.safetensors"
    assert steering.is_spec_file(old_spec)
    loaded = steering.SteeringSpec.load(old_spec)
    assert loaded.layers[1].ops[0].scale == 2.0
    loaded.save(tmp_path / "spec.safetensors")
    written = {STEERING_FORMAT: tmp_path / "spec.safetensors"}
    written[VECTORS_FORMAT] = write_vectors(
        [Vector("mean/a/L1", "mean", 1, ["a"], [3], np.ones(4))], tmp_path)[0]
    for tagged, path in written.items():
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
        assert {k: meta[k] for k in ("format", "version")} == tagged.tags()
    experiment = save_experiment("e", {}, {"loss": 1.0}, root=tmp_path)
    assert experiment.relative_to(tmp_path).parts[:2] == ("experiments", "e")
    assert {k.decode(): v.decode() for k, v in pq.read_schema(experiment).metadata.items()
            } == EXPERIMENT_FORMAT.tags()

    newer = steering.SteeringSpec.to_bytes(loaded).replace(b'"version":"2"', b'"version":"9"')
    (tmp_path / "newer.safetensors").write_bytes(newer)
    with pytest.raises(ValueError, match="version 9; this chatspace reads up to version 2"):
        steering.SteeringSpec.load(tmp_path / "newer.safetensors")

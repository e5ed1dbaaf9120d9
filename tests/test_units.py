"""Sampling, slicing, bucketing, spec resolution and dataset readers, on real files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from chatspace.data.config import DatasetConfig, SamplingConfig
from chatspace.data.sampling import draw_sample
from chatspace.data.sources import RowReader, open_source
from chatspace.data.texts import extract
from chatspace.errors import BadInput
from chatspace.kinds.embed.bucketing import make_batches
from chatspace.kinds.embed.spec import EmbedSpec, ModelConfig
from chatspace.runs.kind import PartOutput
from chatspace.runs.plan import slice_bounds
from chatspace.runs.task import part_bounds
from chatspace.specs import resolve_spec
from tests.helpers import PYDOCS, REPO


def test_sample_is_deterministic_and_independent_of_array():
    cfg = SamplingConfig(seed=7, n=500)
    first, second = draw_sample(cfg, 10_000), draw_sample(cfg, 10_000)
    assert np.array_equal(first, second)
    assert len(np.unique(first)) == 500 and np.all(np.diff(first) > 0)
    assert not np.array_equal(first, draw_sample(SamplingConfig(seed=8, n=500), 10_000))
    for tasks in (1, 3, 64):
        joined = np.concatenate([first[s:e] for s, e in slice_bounds(len(first), tasks)])
        assert np.array_equal(joined, first)


def test_fraction_sampling_and_max_rows():
    assert len(draw_sample(SamplingConfig(p=0.25), 1000)) == 250
    assert np.array_equal(draw_sample(SamplingConfig(p=1.0), 10), np.arange(10))
    assert len(draw_sample(SamplingConfig(p=1.0, max_rows=4), 10)) == 4


def test_slices_are_contiguous_and_balanced():
    bounds = slice_bounds(10, 3)
    assert bounds == [(0, 3), (3, 6), (6, 10)]
    sizes = [e - s for s, e in slice_bounds(1001, 64)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 1001
    with pytest.raises(BadInput, match="larger than the 5 rows"):
        slice_bounds(5, 6)
    assert [(p.start, p.stop) for p in part_bounds(10, 25, 10)] == [(10, 20), (20, 25)]


def test_batches_sorted_and_sized():
    lengths = [5, 300, 17, 40, 9, 128, 33, 2, 64, 65]
    batches = make_batches(lengths, ModelConfig(batch_size=3), 256)
    assert sorted(i for b in batches for i in b.rows) == list(range(len(lengths)))
    assert all(len(b.rows) <= 3 for b in batches)
    assert all(b.pad_to == max(lengths[i] for i in b.rows) for b in batches)
    by_tokens = make_batches(lengths, ModelConfig(tokens_per_batch=100), 256)
    assert all(len(b.rows) * b.pad_to <= 100 or len(b.rows) == 1 for b in by_tokens)


def test_compiled_batches_pad_to_power_of_two_buckets():
    lengths = [5, 17, 40, 9, 33, 2, 64, 65, 250]
    cfg = ModelConfig(batch_size=8, compile=True, bucket_min_tokens=16, bucket_max_tokens=128)
    batches = make_batches(lengths, cfg, 256)
    assert {b.bucket for b in batches} == {16, 32, 64, 128}
    for b in batches:
        assert all(lengths[i] <= b.pad_to for i in b.rows)
        assert b.pad_to == max(b.bucket, max(lengths[i] for i in b.rows))


def test_spec_file_and_flag_overrides(tmp_path: Path):
    spec_file = tmp_path / "s.toml"
    spec_file.write_text('[dataset]\nname = "x.jsonl"\ntext_field = "text"\n'
                         '[sampling]\nn = 5\nseed = 3\n[run]\narray = 2\n')
    spec = resolve_spec(EmbedSpec, spec_file,
                        {"sampling": {"seed": 9, "n": None}, "run": {"array": 4}})
    assert (spec.sampling.seed, spec.sampling.n, spec.run.array) == (9, 5, 4)
    spec_file.write_text('[dataset]\nname = "x"\ntext_field = "t"\nbogus = 1\n')
    with pytest.raises(BadInput, match="unknown key dataset.bogus"):
        resolve_spec(EmbedSpec, spec_file, {})
    spec_file.write_text('[sampling]\nn = "five"\n')
    with pytest.raises(BadInput, match="sampling.n must be int"):
        resolve_spec(EmbedSpec, spec_file, {})


@pytest.mark.parametrize("fmt", ["parquet", "csv", "arrow", "jsonl"])
def test_readers_agree_across_formats(tmp_path: Path, fmt: str):
    rows = [json.loads(line) for line in PYDOCS.read_text().splitlines()[:50]]
    table = pa.Table.from_pylist(rows)
    path = tmp_path / f"d.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, path, row_group_size=7)
    elif fmt == "csv":
        pacsv.write_csv(table, path)
    elif fmt == "arrow":
        with pa.ipc.new_file(path, table.schema) as writer:
            writer.write_table(table)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    info = open_source(str(path), None, None)
    assert info.rows == 50 and set(info.columns) == {"id", "doc", "text"}
    picks = np.array([0, 6, 7, 8, 30, 49])
    values, ids = RowReader(info).read(picks, ["text", "id"])
    assert values["text"] == [rows[i]["text"] for i in picks]
    assert ids == [f"d:{i}" for i in picks]


def test_directory_of_files_numbers_rows_across_files(tmp_path: Path):
    rows = [json.loads(line) for line in PYDOCS.read_text().splitlines()[:30]]
    (tmp_path / "data").mkdir()
    for k in range(3):
        pq.write_table(pa.Table.from_pylist(rows[k * 10:(k + 1) * 10]),
                       tmp_path / "data" / f"train-{k}.parquet")
    info = open_source(str(tmp_path / "data"), None, None)
    values, ids = RowReader(info).read(np.array([1, 12, 29]), ["text"])
    assert values["text"] == [rows[1]["text"], rows[12]["text"], rows[29]["text"]]
    assert ids == ["train-0:1", "train-1:2", "train-2:9"]


def test_extract_text_and_messages():
    text_cfg = DatasetConfig(name="x", text_field="t")
    assert extract("hi", text_cfg) == ("hi", None)
    assert extract("  ", text_cfg) == (None, "empty")
    assert extract(None, text_cfg) == (None, "null")
    assert extract(3, text_cfg) == (None, "non-string")
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    first = DatasetConfig(name="x", messages_field="m")
    conv = DatasetConfig(name="x", messages_field="m", extract="conversation")
    assert extract(chat, first) == ("a", None)
    assert extract(chat, conv) == ("user: q\nassistant: a", None)
    assert extract(chat[:1], first) == (None, "no-assistant-turn")
    assert extract("x", first) == (None, "messages-not-a-list")


@pytest.mark.parametrize("spec_file", sorted(p for p in (REPO / "jobs").glob("*.toml")
                                             if "[dataset]" in p.read_text()),
                         ids=lambda p: p.name)
def test_shipped_embed_specs_are_valid(spec_file: Path):  # steer ones: test_steer_job.py
    spec = resolve_spec(EmbedSpec, spec_file, {})
    assert spec.dataset.name and spec.run.array >= 1


def test_the_shipped_serve_spec_and_rubrics_are_valid():
    from chatspace.kinds.judge.rubric import load_rubric
    from chatspace.kinds.judge.sources import COLUMNS
    from chatspace.kinds.serve.spec import ServeSpec

    spec = resolve_spec(ServeSpec, REPO / "jobs" / "serve.toml", {"model": {"name": "m"}})
    assert spec.server.port == 0 and spec.slurm.gpus_per_task == 1
    for rubric in (REPO / "jobs" / "rubrics").glob("*.toml"):
        assert load_rubric(rubric, set(COLUMNS)).fields() <= set(COLUMNS)


def test_the_run_machinery_imports_no_job_package_and_no_cli():
    import ast

    lower = {"runs": ("chatspace.kinds", "chatspace.cli"), "data": ("chatspace.kinds",
                                                                   "chatspace.cli")}
    for folder, banned in lower.items():
        for path in (REPO / "chatspace" / folder).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                bad = [n for n in names if n.startswith(banned)]
                assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_parts_made_before_a_job_fails_are_committed(tmp_path):
    """A job that fails on its fourth part (say, an API quota) keeps its first three."""
    import pyarrow as pa

    from chatspace.kinds import KINDS
    from chatspace.runs.record import Run
    from chatspace.runs.task import TaskRunner
    from tests.helpers import plan

    class FailsOnFourthPart(type(KINDS["embed"])):
        def run_parts(self, run, task, parts, timer):
            for part in parts[:3]:
                yield PartOutput(part, {"shard": pa.table({"n": [part.number]})},
                                 {"skipped_rows": []})
            raise RuntimeError("quota exhausted")

    planned = plan(tmp_path / "ws", PYDOCS, n=60, array=1, run={"part_rows": 10})
    run = Run(planned.root, planned.run_id, FailsOnFourthPart())
    with pytest.raises(RuntimeError, match="quota exhausted"):
        TaskRunner(run, 0).execute()
    assert sorted(p.name for p in run.parts_dir(0).glob("*.json")) == [
        "part-00000.json", "part-00001.json", "part-00002.json"]


def test_every_spec_key_has_one_generated_flag():
    """The flags are generated from the fields: one per key of every table, no two with one
    name, typed and defaulted by the field, and a flag value reaches its key."""
    from chatspace.cli.options import overrides_from, spec_flags
    from chatspace.kinds import KINDS
    from chatspace.specs import is_list, sections

    for kind in KINDS.values():
        flags = spec_flags(kind.spec_type)
        keys = {(f.table, f.key) for f in flags}
        for table, hint in sections(kind.spec_type).items():
            section = hint.__args__[0] if is_list(hint) else hint
            for key, info in section.model_fields.items():
                inner = getattr(info.annotation, "model_fields", None)  # [slurm.reduce]
                wanted = {(f"{table}.{key}", k) for k in inner} if inner else {(table, key)}
                assert wanted <= keys, (kind.name, table, key)
        assert len({f.param for f in flags}) == len(flags)
    embed = {f.param: f for f in spec_flags(KINDS["embed"].spec_type)}
    assert "(default: 64)" in embed["batch_size"].options["help"]
    assert embed["batch_size"].options["type"] is int and embed["batch_size"].options["default"] \
        is None  # a flag not given leaves the spec file's value
    assert embed["compile_model"].spellings == "--compile-model/--no-compile-model"
    steer = {f.param: f for f in spec_flags(KINDS["steer"].spec_type)}
    assert list(steer["capture_rows"].options["type"].choices) == ["all", "prompt", "response",
                                                                  "last"]
    given = overrides_from({"capture_rows": "mean", "prompts": None}, list(steer.values()))
    assert given["capture"]["rows"] == "mean" and given["prompts"]["file"] is None


def test_the_slurm_environment_is_read_in_one_place():
    from chatspace.runs.slurm_env import SlurmJobEnvironment

    assert SlurmJobEnvironment.current({}) is None
    plain = SlurmJobEnvironment.current({"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "2"})
    assert plain.job == "7" and plain.attempt_fields() == {"job_id": "7", "job": "7",
                                                           "restart_count": 2}
    task = SlurmJobEnvironment.current({"SLURM_JOB_ID": "12", "SLURM_ARRAY_JOB_ID": "9",
                                        "SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MAX": "4",
                                        "SLURM_ARRAY_TASK_COUNT": "5"})
    assert task.job == "9_3" and task.array_task_min == 3 and task.array_task_max == 4
    assert task.attempt_fields()["array_task_count"] == 5

"""Phase 17: a shared root is hostile ground. Each case plants what a hostile group member, a
careless user or a broken file would (links inside a run, edited records, capture files of
another shape, names built to collide, control characters, runs that do not parse) against
real files, links, FIFOs and processes, and checks that nothing outside the root is written or
deleted, that no two things become one result, and that one bad run takes nothing else down."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from chatspace.experiments import save_experiment
from chatspace.kinds import KINDS
from chatspace.runs.files import atomic_path, read_json, write_json
from chatspace.runs.record import Run
from tests.helpers import PYDOCS, chatspace, embed, files_under, plan
from tests.test_vectors import steer, steer_spec

TITLE = "\x1b]0;pwned\x07"  # sets the terminal's title
CLIPBOARD = "\x1b]52;c;cm0gLXJmIH4=\x07"  # puts `rm -rf ~` on the clipboard
CLEAR = "\x1b[2J\x9b2J"  # clears the screen (ESC [ and the one-byte C1 CSI)
PERSONAS = [{"persona": "sea-dog", "category": "none"}, {"persona": "x"},
            {"persona": "sea", "category": "c"}, {"persona": "dog-x", "category": "c"},
            {"persona": f"captain{TITLE}{CLIPBOARD}{CLEAR}", "category": "c"}]


def one_line(result: subprocess.CompletedProcess, code: int, expected: str) -> str:
    assert result.returncode == code, (result.stdout, result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert expected in lines[0], lines[0]
    return lines[0]


def error_line(result: subprocess.CompletedProcess, code: int, expected: str) -> str:
    """A task's failure: its log lines, then one error line (no traceback)."""
    assert result.returncode == code, (result.stdout, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("chatspace: error: ") and expected in last, last
    return last


def victim_folder(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    return victim


def untouched(victim: Path) -> bool:
    return files_under(victim) == [victim / "keep.txt"] and \
        (victim / "keep.txt").read_text() == "mine"


# 1. links inside a run are never followed


@pytest.mark.parametrize("folder", ["parts", "tasks", "leases", "attempts", "output"])
def test_a_planted_folder_link_is_refused_before_anything_is_written(tmp_path, folder):
    root, victim = tmp_path / "ws", victim_folder(tmp_path)
    run = plan(root, PYDOCS, "linked", n=20, array=1)
    target = run.output_dir if folder == "output" else run.dir / folder
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(victim, target)
    line = one_line(chatspace("run", "task", "linked", "--task", "0", root=root), 2,
                    f"{target} is a link to {victim}")
    assert "writes and deletes nothing through a link" in line
    assert untouched(victim)
    one_line(chatspace("run", "reduce", "linked", root=root), 2, "is a link to")
    assert untouched(victim)


def test_a_lease_link_on_a_finished_run_truncates_nothing(tmp_path):
    root, victim = tmp_path / "ws", victim_folder(tmp_path)
    run = embed(root, PYDOCS, "done", n=20, array=1)
    lease = run.dir / "leases" / "task-00000.lock"
    lease.unlink()
    os.symlink(victim / "keep.txt", lease)
    one_line(chatspace("run", "task", "done", "--task", "0", root=root), 2,
             f"{lease} is a link to {victim / 'keep.txt'}")
    assert untouched(victim)
    # a completed task removes only the files it wrote in its parts folder
    parts = run.parts_dir(0)
    parts.mkdir(parents=True)
    (parts / "notes.txt").write_text("by hand")
    os.symlink(victim / "keep.txt", parts / "part-00099.json")
    lease.unlink()
    (run.dir / "tasks" / "task-00000.json").unlink()
    assert chatspace("run", "task", "done", "--task", "0", root=root).returncode == 0
    assert (parts / "notes.txt").read_text() == "by hand" and untouched(victim)
    assert not (parts / "part-00099.json").is_symlink()


def test_a_planted_temp_name_link_is_not_written_through(tmp_path):
    victim = victim_folder(tmp_path)
    dest = tmp_path / "ws" / "record.json"
    dest.parent.mkdir()
    import socket

    os.symlink(victim / "keep.txt",
               dest.with_name(f".tmp-{socket.gethostname()}-{os.getpid()}-{dest.name}"))
    write_json(dest, {"a": 1})
    assert json.loads(dest.read_text()) == {"a": 1} and untouched(victim)
    with atomic_path(tmp_path / "ws" / "other.bin") as tmp:
        assert tmp.is_file() and not tmp.is_symlink()
        tmp.write_bytes(b"x")


# 3. records are checked when used


@pytest.mark.parametrize("output_dir", ["../outside", "/tmp/chatspace-hostile-outside"])
def test_an_edited_plan_cannot_send_a_task_outside_the_root(tmp_path, output_dir):
    root = tmp_path / "ws"
    run = plan(root, PYDOCS, "edited", n=20, array=1)
    data = read_json(run.plan_path)
    data["output_dir"] = output_dir
    run.plan_path.write_text(json.dumps(data))
    one_line(chatspace("run", "task", "edited", "--task", "0", root=root), 2,
             "is outside the root")
    assert not (tmp_path / "outside").exists()
    assert not Path("/tmp/chatspace-hostile-outside").exists()
    data["output_dir"], data["outputs"] = "embeddings", {"shard": "../../x-{task:05d}.parquet"}
    run.plan_path.write_text(json.dumps(data))
    one_line(chatspace("run", "task", "edited", "--task", "0", root=root), 2,
             "is not a relative path of plain names")
    assert not (tmp_path / "x-00000.parquet").exists()


# 4, 6, 3: vectors keys, the missing group, capture files from records


@pytest.fixture(scope="module")
def hostile_sweep(tmp_path_factory, tiny_model_dir) -> Run:
    """5 personas (names that collide under a naive key, one with no category, one whose
    category is "none", one with terminal escapes) x 2 prompts, layer 1 captured."""
    where = tmp_path_factory.mktemp("hostile")
    (where / "prompts.json").write_text(json.dumps(["Hello?", "Why?"]))
    (where / "personas.json").write_text(json.dumps(PERSONAS))
    return steer(where / "ws", steer_spec(tiny_model_dir("qwen2"), where / "prompts.json", 2,
                                          rest=f"""
[personas]
file = "{where / 'personas.json'}"
[capture]
layers = [1]
rows = "last"
"""))


def test_contrasts_that_used_to_collide_are_two_vectors(hostile_sweep):
    root = hostile_sweep.root
    out = chatspace("submit", "vectors", "--from", hostile_sweep.run_id, "--contrast",
                    "sea-dog:x", "--contrast", "sea:dog-x", "--executor", "debug", "--json",
                    root=root)
    assert out.returncode == 0, out.stderr[-3000:]
    run = Run.open(json.loads(out.stdout)["run_dir"], root, KINDS)
    vectors = load_file(run.output_dir / "vectors.safetensors")
    table = pq.read_table(run.output_dir / "vectors.parquet").to_pylist()
    keys = [r["key"] for r in table]
    assert len(keys) == len(set(keys)) == len(vectors)
    assert "contrast/sea%2Ddog-x/L1" in vectors and "contrast/sea-dog%2Dx/L1" in vectors
    assert not torch.equal(vectors["contrast/sea%2Ddog-x/L1"],
                           vectors["contrast/sea-dog%2Dx/L1"])
    ambiguous = chatspace("plan", "vectors", "--from", hostile_sweep.run_id, "--group-by",
                          "category", "--contrast", "c:none", root=root)
    assert ambiguous.returncode == 0, ambiguous.stderr  # one reading only: c and none


def test_a_missing_category_is_its_own_group_never_none(hostile_sweep):
    root = hostile_sweep.root
    manifest = read_json(hostile_sweep.manifest_path)
    categories = {c["category"]: c["generations"] for c in manifest["per_category"]}
    assert categories == {None: 2, "none": 2, "c": 6}
    out = chatspace("submit", "vectors", "--from", hostile_sweep.run_id, "--group-by",
                    "category", "--executor", "debug", "--json", root=root)
    assert out.returncode == 0, out.stderr[-3000:]
    run = Run.open(json.loads(out.stdout)["run_dir"], root, KINDS)
    rows = {r["key"]: r for r in pq.read_table(run.output_dir / "vectors.parquet").to_pylist()}
    assert rows["mean/~/L1"]["groups"] == [None] and rows["mean/~/L1"]["counts"] == [2]
    assert rows["mean/none/L1"]["groups"] == ["none"] and rows["mean/none/L1"]["counts"] == [2]
    projections = pq.read_table(run.output_dir / "projections.parquet").to_pylist()
    assert len({p["id"] for p in projections if p["group"] is None}) == 2
    for ref in (run.run_id, hostile_sweep.run_id):  # the reports draw the null group too
        report = chatspace("report", ref, "-o", str(root / f"{ref}.html"), root=root)
        assert report.returncode == 0, report.stderr[-3000:]


def test_capture_records_naming_files_outside_or_of_another_shape_fail(hostile_sweep,
                                                                      tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(hostile_sweep.root, root, symlinks=True)
    sweep = Run.open(hostile_sweep.run_id, root, KINDS)
    index_path = sweep.output_paths(0)["capture_index"]
    index = pq.read_table(index_path)
    # an index edited to name a file outside the run: refused when a vectors run is planned
    outside = index.set_column(index.schema.get_field_index("file"), "file",
                               [["../../../../../../etc/passwd"] * index.num_rows])
    record_path = sweep.completion_path(0)
    record = read_json(record_path)

    def planted(table) -> None:  # the completion record edited to match, as a user could
        pq.write_table(table, index_path)
        for entry in record["outputs"]:
            if entry["path"].endswith("index.parquet"):
                entry["bytes"] = index_path.stat().st_size
        record_path.write_text(json.dumps(record))

    planted(outside)
    one_line(chatspace("plan", "vectors", "--from", sweep.run_id, root=root), 2,
             "capture index file")
    planted(index)
    # the vectors run's own rows edited after planning: refused by its task
    planned = chatspace("plan", "vectors", "--from", sweep.run_id, "--run-id", "v", root=root)
    assert planned.returncode == 0, planned.stderr
    rows_path = root / "runs" / "v" / "rows.parquet"
    rows = pq.read_table(rows_path)
    pq.write_table(rows.set_column(rows.schema.get_field_index("file"), "file",
                                   [["../outside.safetensors"] * rows.num_rows]), rows_path)
    error_line(chatspace("run", "task", "v", "--task", "0", root=root), 2, "capture file")
    pq.write_table(rows, rows_path)
    # a capture file re-shaped to half the hidden size, at the same size
    capture = next(sweep.output_dir.glob("captures-*/part-*.safetensors"))
    tensors = load_file(capture)
    with safe_open(str(capture), framework="pt") as fh:
        metadata = fh.metadata()
    halved = save({k: t.reshape(-1, t.shape[-1] // 2) for k, t in tensors.items()}, metadata)
    assert len(halved) == capture.stat().st_size
    capture.write_bytes(halved)
    line = error_line(chatspace("run", "task", "v", "--task", "0", root=root), 1,
                    "holds rows of 32 numbers; the model's hidden size is 64")
    assert str(capture) in line
    assert not list(Run.open("v", root, KINDS).output_dir.glob("stats-*.parquet"))


# 7. data never drives the terminal


def test_query_and_errors_neutralise_control_characters(hostile_sweep, tmp_path):
    root = hostile_sweep.root
    table = chatspace("query", "SELECT DISTINCT persona FROM steer_results ORDER BY 1",
                      root=root)
    assert table.returncode == 0, table.stderr
    assert "captain" in table.stdout
    for text in (table.stdout, table.stderr):
        assert not any(ord(c) < 0x20 and c not in "\n\t" or 0x7f <= ord(c) < 0xa0
                       for c in text), repr(text)
    as_csv = chatspace("query", "SELECT DISTINCT persona FROM steer_results", "--csv",
                       root=root)  # to a file (not a terminal): the data as it is
    assert TITLE in as_csv.stdout
    status = chatspace("status", hostile_sweep.run_id, root=root)
    assert status.returncode == 0 and "\x1b" not in status.stdout + status.stderr
    bad = chatspace("status", f"run{TITLE}", root=root)
    assert bad.returncode == 2 and "\x1b" not in bad.stderr and "\x07" not in bad.stderr


def test_chat_shows_a_persona_label_without_its_control_characters(tiny_model_dir):
    import io

    from transformers import AutoTokenizer

    from chatspace.chat.display import ReplyPrinter

    out = io.StringIO()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir("qwen2"))
    ReplyPrinter(tokenizer, PERSONAS[-1]["persona"], False, out, styled=False)
    assert out.getvalue().startswith("captain") and "\x1b" not in out.getvalue()
    assert "\x07" not in out.getvalue() and "\x9b" not in out.getvalue()


# 8. one bad run does not take the root down


def test_runs_that_do_not_parse_are_skipped_with_one_warning_each(tmp_path):
    root = tmp_path / "ws"
    good = embed(root, PYDOCS, "good", n=20, array=1)
    plan_data = read_json(good.plan_path)
    runs = root / "runs"

    def planted(name: str, data=None) -> Path:
        (runs / name).mkdir()
        if data is not None:
            (runs / name / "plan.json").write_text(json.dumps(data))
        return runs / name / "plan.json"

    os.mkfifo(planted("fifo"))
    os.symlink("/dev/zero", planted("zero"))
    planted("nullspec", {**plan_data, "run_id": "nullspec", "spec": None})
    planted("huge", {**plan_data, "run_id": "huge",
                     "tasks": [{"task": 0, "start": 0, "stop": 10 ** 30}]})
    planted("wrongkind", {**plan_data, "run_id": "wrongkind", "kind": "steer"})
    planted("format", {**plan_data, "run_id": "format", "format": "somebody-else"})
    planted("version", {**plan_data, "run_id": "version", "version": "2"})
    listed = chatspace("query", "--list", "--json", root=root, timeout=120)
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert [r["run_id"] for r in json.loads(listed.stdout)] == ["good"]
    warned = [line for line in listed.stderr.splitlines() if "Traceback" not in line]
    for name in ("fifo", "zero", "nullspec", "huge", "wrongkind", "format", "version"):
        assert sum(name in line for line in warned) == 1, (name, listed.stderr[-3000:])
    assert "Traceback" not in listed.stderr
    assert chatspace("report", "good", "-o", str(tmp_path / "r.html"),
                     root=root).returncode == 0
    for name, expected in (("fifo", "is not a regular file"), ("zero", "is a link"),
                           ("nullspec", "is not a chatspace-plan record"),
                           ("format", "'somebody-else' record"),
                           ("version", "has version '2', which is not a version number")):
        for command in (("run", "reduce", name), ("status", name)):
            one_line(chatspace(*command, root=root, timeout=120), 2, expected)
    one_line(chatspace("run", "reduce", "wrongkind", root=root, timeout=120), 2, "wrongkind")


# 12. records are strict JSON


def test_records_are_strict_json(tmp_path):
    path = tmp_path / "r.json"
    write_json(path, {"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(c)) == \
        {"a": None, "b": [None, 1.5], "c": {"d": None}}


# also: the experiment store checks its arguments


def test_experiment_arguments_are_checked_in_one_line(tmp_path):
    root = tmp_path / "ws"
    for kwargs, expected in (
            ({"name": 3, "config": {}, "metrics": {}}, "name must be a string"),
            ({"name": "e", "config": [1], "metrics": {}}, "config must be a dict"),
            ({"name": "e", "config": {}, "metrics": [1]}, "metrics must be a dict"),
            ({"name": "e", "config": {}, "metrics": {"m": "1"}}, "must be a finite number"),
            ({"name": "e", "config": {}, "metrics": {"m": 10 ** 400}}, "finite number"),
            ({"name": "e", "config": {}, "metrics": {}, "tags": "abc"}, "list of strings"),
            ({"name": "e", "config": {"k": "\ud800"}, "metrics": {}}, "lone surrogate"),
            ({"name": "e", "config": {}, "metrics": {}, "notes": 5}, "notes must be")):
        with pytest.raises(ValueError, match=expected):
            save_experiment(**kwargs, root=root)
    assert files_under(root) == []
    path = save_experiment("e", {"lr": 1e-3}, {"loss": np.float32(0.25), "n": np.int64(3)},
                           tags=["a"], root=root)
    row = pq.read_table(path).to_pylist()[0]
    assert dict(row["metrics"]) == {"loss": 0.25, "n": 3.0} and row["tags"] == ["a"]


# 11. base models: prompts.template = "raw"


def test_a_base_model_runs_with_raw_prompts(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    base = tmp_path / "base-model"
    shutil.copytree(tiny_model_dir("qwen2"), base)
    config = json.loads((base / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    (base / "chat_template.jinja").unlink(missing_ok=True)
    prompts = ["Once upon a time", "The capital of"]
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    spec = steer_spec(base, tmp_path / "prompts.json", 3)
    refused = chatspace("plan", "steer", str(_written(tmp_path / "a.toml", spec)),
                        root=tmp_path / "ws")
    one_line(refused, 2, "has no chat template (a base model?)")
    spec = spec.replace("[generation]", 'template = "raw"\n[generation]')
    run = steer(tmp_path / "ws", spec)
    results = pq.read_table(run.output_paths(0)["results"]).to_pylist()
    tokenizer = AutoTokenizer.from_pretrained(base)
    assert [r["prompt"] for r in results] == prompts
    assert [r["prompt_tokens"] for r in results] == \
        [len(tokenizer(p)["input_ids"]) for p in prompts]
    assert all(r["system_prompt"] is None and r["output_tokens"] == 3 for r in results)
    assert run.plan.details["template"] == "raw"


def _written(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# also: a message that names the right thing


def test_a_vectors_run_from_an_embed_run_names_the_kinds(tmp_path):
    root = tmp_path / "ws"
    plan(root, PYDOCS, "emb", n=20, array=1)
    one_line(chatspace("plan", "vectors", "--from", "emb", root=root), 2,
             "run emb is a 'embed' run; a steer run is needed here")

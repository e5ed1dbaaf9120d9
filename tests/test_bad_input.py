"""Bad input: exit code 2, one line naming the wrong field/file/value, and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import PYDOCS, chatspace, chatspace_here, files_under

BASE = ["submit", "embed", "--executor", "local", "--dataset", str(PYDOCS),
        "--text-field", "text"]


def assert_bad(args: list[str], root: Path, expected: str) -> None:
    result = chatspace_here(*args, root=root)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("chatspace: error:") and expected in lines[0], lines[0]
    assert files_under(root) == [], "bad input must write nothing"


@pytest.mark.parametrize(("extra", "expected"), [
    (["--n", "10", "--dataset", "/no/such/file.jsonl"], "dataset file not found: /no/such"),
    (["--n", "10", "--dataset", "no-such-org/no-such-dataset"],
     "'no-such-org/no-such-dataset' is neither a local path nor in the local HF cache"),
    (["--n", "10", "--text-field", "body"], "dataset.text_field 'body' is not a column"),
    (["--n", "5000"], "sampling.n (--n) = 5000 is larger than the 2000 rows"),
    (["--p", "0"], "sampling.p (--p) must be in (0, 1], got 0.0"),
    (["--p", "1.5"], "sampling.p (--p) must be in (0, 1], got 1.5"),
    (["--n", "10", "--p", "0.5"], "give at most one of sampling.n (--n) and sampling.p"),
    (["--n", "10", "--array", "0"], "run.array (--array) must be >= 1, got 0"),
    (["--n", "10", "--array", "11"], "run.array (--array) = 11 is larger than the 10 rows to run"),
    (["--n", "10", "--model", "/no/such/model"], "model path not found: /no/such/model"),
    (["--n", "10", "--model", "no-org/no-model"], "model 'no-org/no-model' is neither"),
    (["--n", "10", "--batch-size", "0"], "model.batch_size (--batch-size) must be >= 1, got 0"),
    (["--n", "10", "--backend", "openai", "--dimensions", "4000"],
     "openai.dimensions (--dimensions) must be 1 to 1536 for text-embedding-3-small, got 4000"),
    (["--n", "10", "--parallelism", "0"], "--parallelism must be >= 1, got 0"),
    (["--n", "10", "--executor", "debug", "--parallelism", "2"],
     "--parallelism applies to --executor local only, not debug"),
    (["--n", "10", "--container", "x.sif"],
     "--container applies to --executor slurm only, not local"),
    (["--n", "10", "--seed", "-1"], "sampling.seed (--seed) must be >= 0, got -1"),
    (["--n", "10", "--sbatch-arg", "bogus"], "--sbatch-arg 'bogus' must look like --key=value"),
    (["--n", "10", "--time", "notatime"], "slurm.time (--time) 'notatime' is not a SLURM time"),
])
def test_bad_submit_input(root, extra, expected):
    assert_bad(BASE + extra, root, expected)


def test_text_field_error_lists_columns(root):
    result = chatspace_here(*BASE, "--n", "3", "--text-field", "body", root=root)
    assert "(columns: id, doc, text)" in result.stderr


def test_messages_field_absent(root):
    args = ["submit", "embed", "--executor", "local", "--dataset", str(PYDOCS),
            "--messages-field", "messages", "--n", "3"]
    assert_bad(args, root, "dataset.messages_field 'messages' is not a column")


def test_model_directory_that_is_not_a_model(root, tmp_path):
    (tmp_path / "empty-model").mkdir()
    assert_bad(BASE + ["--n", "3", "--model", str(tmp_path / "empty-model")], root,
               "has no modules.json or config.json")


def test_unwritable_root(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = chatspace_here(*BASE, "--n", "3", root=blocker / "ws")
    assert result.returncode == 2 and "is not writable" in result.stderr
    assert blocker.read_text() == "not a directory"


def test_existing_run_id_with_a_different_spec(root):
    first = chatspace("plan", "embed", "--dataset", str(PYDOCS), "--text-field", "text",
                      "--n", "5", "--run-id", "fixed", root=root)
    assert first.returncode == 0, first.stderr
    before = files_under(root)
    result = chatspace_here(*BASE, "--n", "6", "--run-id", "fixed", root=root)
    assert result.returncode == 2
    assert "run id fixed already exists" in result.stderr and "different spec" in result.stderr
    assert files_under(root) == before


def test_spec_file_errors(root, tmp_path):
    assert_bad(["submit", "embed", str(tmp_path / "missing.toml"), "--executor", "local"],
               root, "spec file not found")
    bad = tmp_path / "bad.toml"
    bad.write_text('[dataset]\nname = "x"\ntext_field = "t"\ncolour = "blue"\n')
    assert_bad(["submit", "embed", str(bad), "--executor", "local"], root,
               "unknown key dataset.colour")


def test_binary_and_ill_typed_spec_files(root, tmp_path):
    binary = tmp_path / "binary.toml"
    binary.write_bytes(bytes(range(256)) * 4)
    assert_bad(["submit", "embed", str(binary), "--executor", "local"], root,
               f"spec file {binary} is not a TOML text file")
    args = tmp_path / "args.toml"
    args.write_text(f'[dataset]\nname = "{PYDOCS}"\ntext_field = "text"\n[sampling]\nn = 3\n'
                    "[slurm]\nsbatch_args = [1, 2]\n")
    assert_bad(["plan", "embed", str(args)], root, "--sbatch-arg 1 must look like --key=value")


def test_bad_dataset_files_are_named_at_plan(root, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), empty)
    assert_bad([*BASE[:5], str(empty), "--text-field", "text", "--p", "0.5"], root,
               "the dataset has no rows to sample")
    for line, kind in (("5", "int"), ("[1, 2]", "list")):
        data = tmp_path / f"{kind}.jsonl"
        data.write_text('{"text": "fine"}\n' + line + "\n")
        assert_bad([*BASE[:5], str(data), "--text-field", "text", "--p", "1"], root,
                   f"dataset file {data}: line 2 is a JSON {kind}, not an object")
    ids = tmp_path / "ids.jsonl"
    ids.write_text("".join(json.dumps({"id": i, "text": f"t{n}"}) + "\n"
                           for n, i in enumerate(["a", "b", "a", None, "c"])))
    assert_bad([*BASE[:5], str(ids), "--text-field", "text", "--p", "1", "--id-field", "id"],
               root, "dataset.id_field 'id' is null at 1 sampled row(s) (rows 3)")
    ids.write_text("".join(json.dumps({"id": i, "text": f"t{n}"}) + "\n"
                           for n, i in enumerate(["a", "b", "a", "c"])))
    assert_bad([*BASE[:5], str(ids), "--text-field", "text", "--p", "1", "--id-field", "id"],
               root, "dataset.id_field 'id' repeats 1 id(s) among the sampled rows: a")


def test_task_out_of_range(root):
    planned = chatspace("plan", "embed", "--dataset", str(PYDOCS), "--text-field", "text",
                        "--n", "5", "--array", "2", "--json", root=root)
    run_dir = json.loads(planned.stdout)["run_dir"]
    result = chatspace_here("run", "embed-task", run_dir, "--task", "2")
    assert result.returncode == 2 and "--task 2 is out of range" in result.stderr


def test_unknown_run(root):
    result = chatspace_here("status", "nope", root=root)
    assert result.returncode == 2 and "no planned run 'nope'" in result.stderr


def test_default_executor_without_sbatch_suggests_local(root, tmp_path):
    bare = tmp_path / "bin"
    bare.mkdir()
    result = chatspace("submit", "embed", "--dataset", str(PYDOCS), "--text-field", "text",
                       "--n", "3", root=root, env={"PATH": str(bare)})
    assert result.returncode == 2
    assert result.stderr.strip() == ("chatspace: error: sbatch is not on PATH: use "
                                     "--executor local (or debug) to run here")
    assert files_under(root) == []

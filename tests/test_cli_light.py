"""Login-node commands stay light: each command runs as a whole process and must not have
imported the model stack or the results stack by the time it exits.

Which command may import what, and why:
- `--help`, `status`, `logs`, `verify`, `cancel`, `resume` of a done run, `plan embed` and
  `submit embed --executor slurm` (sentence-transformers backend): none of HEAVY. The plan reads
  the dataset's metadata and the model's name only; tokenizers load in the tasks.
- `plan steer` / `submit steer`: transformers (the model's config and tokenizer are checked at
  plan) and torch (vector files are loaded and checked against the hidden size).
- `chat`, `run task` of a steer run, `run task` of an embed run: torch and their backends.
- `query`, `report`: duckdb and pyarrow; `viz`: streamlit.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import PYDOCS, REPO, chatspace

HEAVY = ("torch", "vllm", "transformers", "sentence_transformers", "datasets", "streamlit",
         "duckdb")

# Runs the CLI in this process, then prints which of HEAVY it imported (on its last line).
PROBE = """
import json, sys
from chatspace.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
heavy = [m for m in {heavy!r} if m in sys.modules]
print("\\n" + json.dumps({{"code": code, "heavy": heavy}}))
"""


def imported(*args: str) -> dict:
    """Run `chatspace ARGS` in a fresh interpreter; its exit code and the HEAVY modules it
    imported."""
    out = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    *printed, probe = out.stdout.strip().splitlines()
    return {**json.loads(probe), "stdout": "\n".join(printed), "stderr": out.stderr}


def test_import_of_the_cli_loads_no_heavy_module():
    out = subprocess.run([sys.executable, "-c", "import sys, chatspace.cli; print(sorted(m for m"
                          f" in {HEAVY!r} if m in sys.modules))"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_login_node_commands_import_no_model_stack(tmp_path):
    root = tmp_path / "ws"
    planned = chatspace("plan", "embed", "--dataset", str(PYDOCS), "--text-field", "text",
                        "--n", "40", "--array", "2", "--json", root=root)
    assert planned.returncode == 0, planned.stderr
    run_dir = json.loads(planned.stdout)["run_dir"]
    # each with the exit code it must give here (no task has run; verify: not reduced)
    for args, code in ((["--help"], 0), (["submit", "embed", "--help"], 0),
                       (["status", run_dir], 0), (["logs", run_dir, "--task", "0"], 2),
                       (["verify", run_dir], 1), (["cancel", run_dir], 0),
                       (["plan", "embed", "--dataset", str(PYDOCS), "--text-field", "text",
                         "--n", "40", "--root", str(root)], 0)):
        got = imported(*args)
        assert got["heavy"] == [], (args, got["heavy"])
        assert (got["code"] or 0) == code, (args, got)


@pytest.mark.slurm
def test_submit_to_slurm_imports_no_model_stack(tmp_path, slurm_cluster):
    got = imported("submit", "embed", "--dataset", str(PYDOCS), "--text-field", "text", "--n",
                   "20", "--array", "2", "--executor", "slurm", "--json", "--root",
                   str(tmp_path / "ws"))
    assert got["code"] in (0, None), got
    chatspace("cancel", json.loads(got["stdout"])["run_dir"])  # its tasks need not run
    assert got["heavy"] == [], got["heavy"]

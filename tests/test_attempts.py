"""Attempt records: what each start of a task records, the SLURM jobs they reveal for runs
started by hand (arrays with offsets), one attempt's part of a shared log, the manifest shown
only while it is current, and jobs found in the queue by the comment `plan`'s lines give them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from chatspace.runs.attempts import attempts, log_spans, recording, task_jobs
from chatspace.runs.slurm import sbatch_lines
from chatspace.runs.status import run_status
from tests.helpers import PYDOCS, REPO, chatspace, open_run, plan, shard

SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
              "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_COUNT",
              "SLURM_RESTART_COUNT")


def as_array_task(monkeypatch, job: int, array: int, index: int, lo: int, hi: int) -> None:
    """The environment SLURM gives element `index` of array `array` (elements lo..hi)."""
    for name, value in zip(SLURM_VARS, (job, array, index, lo, hi, hi - lo + 1, 0), strict=True):
        monkeypatch.setenv(name, str(value))


def test_an_attempt_of_a_hand_started_array_stands_for_the_array(root, monkeypatch):
    run = plan(root, PYDOCS, n=40, array=7)
    as_array_task(monkeypatch, job=95, array=90, index=1, lo=0, hi=1)
    with recording(run, 6):  # started as `sbatch --array=0-1 hpc/task.sbatch RUN 5`
        pass
    record = attempts(run, 6)[0]
    assert record.host == socket.gethostname() and record.outcome == "done"
    assert record.slurm["job_id"] == "95" and record.slurm["job"] == "90_1"
    assert task_jobs(run) == {5: "90_0", 6: "90_1"}  # task 5 is queued in the same array

    # a later chatspace submission of task 5 replaces the array's job for it ...
    run.save_submission({"executor": "slurm", "submitted_at": datetime.now(UTC).isoformat(),
                         "arrays": [{"job_id": "99", "tasks": [5], "jobs": ["99"]}]})
    assert task_jobs(run) == {5: "99", 6: "90_1"}
    # ... and task 6 run again outside SLURM has no job any more
    for name in SLURM_VARS:
        monkeypatch.delenv(name)
    with recording(run, 6):
        pass
    assert task_jobs(run) == {5: "99"} and len(attempts(run, 6)) == 2
    with pytest.raises(RuntimeError), recording(run, 5):
        raise RuntimeError("model weights unreadable\nsecond line")
    failed = attempts(run, 5)[-1]
    assert (failed.outcome, failed.error) == ("failed", "model weights unreadable")


ATTEMPT = """import sys
from chatspace.runs.attempts import recording
from tests.helpers import open_run
with recording(open_run(sys.argv[1]), 0):
    print(sys.argv[2], flush=True)
"""


def test_each_attempt_shows_only_its_part_of_a_shared_log(root):
    run = plan(root, PYDOCS, n=20, array=2)
    log = run.log_dir / "task-0.out"
    log.parent.mkdir(parents=True)
    for word in ("first", "second"):  # two attempts appending to one file, as on a requeue
        with open(log, "a") as out:
            subprocess.run([sys.executable, "-c", ATTEMPT, str(run.dir), word], stdout=out,
                           stderr=subprocess.STDOUT, check=True, cwd=REPO, timeout=120)
    assert [s.read() for s in log_spans(run, 0, 1)] == ["first\n"]
    assert [s.read() for s in log_spans(run, 0)] == ["second\n"]
    first = chatspace("logs", str(run.dir), "--task", "0", "--attempt", "1")
    assert first.returncode == 0 and "first" in first.stdout and "second" not in first.stdout
    bad = chatspace("logs", str(run.dir), "--task", "0", "--attempt", "3")
    assert bad.returncode == 2
    assert bad.stderr.strip().endswith("--attempt 3: task 0 of run "
                                       f"{run.run_id} has 2 recorded attempt(s)")
    state = json.loads(chatspace("status", str(run.dir), "--json").stdout)["tasks"][0]
    assert (state["attempts"], state["node"], state["log"]) == (2, socket.gethostname(),
                                                                str(log))


def test_the_manifest_is_shown_only_while_it_is_current(root):
    done = chatspace("submit", "embed", "--dataset", str(PYDOCS), "--text-field", "text",
                     "--n", "20", "--array", "2", "--executor", "debug", "--json", root=root)
    assert done.returncode == 0, done.stderr
    run = open_run(json.loads(done.stdout)["run_dir"])
    assert run_status(run).manifest == str(run.manifest_path)
    watched = chatspace("status", str(run.dir), "--watch", timeout=60)  # nothing left to run
    assert watched.returncode == 0 and watched.stdout.count(f"run {run.run_id} ") == 1
    shard(run, 1).unlink()  # a task lost its output: the manifest no longer describes the run
    state = json.loads(chatspace("status", str(run.dir), "--json").stdout)
    assert state["manifest"] is None and state["manifest_stale"] is True
    assert "manifest: (stale: tasks changed since the last reduce)" in \
        chatspace("status", str(run.dir)).stdout
    resumed = chatspace("resume", str(run.dir), "--executor", "debug")
    assert resumed.returncode == 0, resumed.stderr
    assert run_status(run).manifest == str(run.manifest_path)


def test_jobs_queued_with_plans_lines_are_found_before_they_start(root, tmp_path, monkeypatch):
    run = plan(root, PYDOCS, n=40, array=7)
    lines = sbatch_lines(run, max_array=5)
    assert f"--comment=chatspace:{run.dir}:offset=5" in lines[2]
    assert f"--comment=chatspace:{run.dir}:reduce" in lines[3]
    queue = (f"71_0|RUNNING|None|chatspace:{run.dir}:offset=5\n"
             f"71_1|PENDING|Priority|chatspace:{run.dir}:offset=5\n"
             f"72|PENDING|Dependency|chatspace:{run.dir}:reduce\n"
             f"73_0|RUNNING|None|chatspace:{run.dir}x:offset=0\n"  # another run
             "74|RUNNING|None|\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text(f"#!/bin/sh\ncat <<'EOF'\n{queue}EOF\n")
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    state = run_status(run)
    assert [t.state for t in state.tasks] == ["missing"] * 5 + ["running", "pending"]
    assert state.tasks[6].slurm.reason == "Priority"
    assert state.reduce.job_id == "72" and state.reduce_state == "PENDING"

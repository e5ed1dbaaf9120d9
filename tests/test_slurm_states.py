"""SLURM state logic on canned `sacct`/`squeue`/`scontrol` output (states the dev cluster
cannot produce on demand: PREEMPTED, REQUEUED, NODE_FAIL, a record the shared filesystem shows
late), and SLURM commands that are missing, failing or hanging, through stand-in commands on
PATH."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from chatspace.runs.slurm_cli import JobState, parse_sacct, parse_scontrol, parse_squeue
from chatspace.runs.status import task_state
from chatspace.runs.watch import POLL_FIRST, POLL_MAX, next_poll
from tests.helpers import PYDOCS, chatspace, files_under, plan

SACCT = """\
41_0|COMPLETED|0:0|2026-11-22T10:00:00
41_1|PREEMPTED|0:15|2026-11-22T10:01:00
41_2|NODE_FAIL|0:0|2026-11-22T10:02:00
41_[3-4%2]|PENDING|0:0|Unknown
42|CANCELLED by 0|0:0|2026-11-22T10:03:00
"""


def test_sacct_squeue_and_scontrol_lines_are_parsed():
    states = parse_sacct(SACCT)
    assert states["41_1"] == JobState("PREEMPTED", "0:15", end="2026-11-22T10:01:00")
    assert states["41_3"].state == states["41_4"].state == "PENDING"
    assert states["42"].state == "CANCELLED"
    queue = parse_squeue("41_1|PENDING|BeginTime\n43|PENDING|DependencyNeverSatisfied\n")
    assert queue["41_1"].reason == "BeginTime" and queue["43"].state == "PENDING"
    shown = parse_scontrol("JobId=50 ArrayJobId=49 ArrayTaskId=2 JobState=REQUEUED "
                           "ExitCode=0:0\n", "49")
    assert shown == {"49_2": JobState("REQUEUED", "0:0")}


def state_of(run, job: JobState | None, slurm_error: str | None = None, task: int = 0) -> str:
    jobs = {task: "41_0"}
    return task_state(run, task, jobs, {"41_0": job} if job else {}, False,
                      slurm_error).state


def test_task_states_from_canned_jobs(root):
    run = plan(root, PYDOCS, n=20, array=2)
    recent = (datetime.now() - timedelta(seconds=5)).isoformat(timespec="seconds")
    old = (datetime.now() - timedelta(minutes=5)).isoformat(timespec="seconds")
    assert state_of(run, JobState("PREEMPTED", "0:15")) == "requeued"
    assert state_of(run, JobState("REQUEUED")) == "requeued"
    assert state_of(run, JobState("PENDING", reason="BeginTime")) == \
        "requeued"  # a requeued job waits out its begin time
    assert state_of(run, JobState("PENDING", reason="Priority")) == \
        "pending"
    assert state_of(run, JobState("RUNNING")) == "running"
    assert state_of(run, JobState("NODE_FAIL", "0:0", end=old)) == "failed"
    # COMPLETED but no completion record visible yet: the shared filesystem may lag
    assert state_of(run, JobState("COMPLETED", "0:0", end=recent)) == \
        "completing"
    assert state_of(run, JobState("COMPLETED", "0:0", end=old)) == "failed"
    assert state_of(run, None) == "missing"
    assert state_of(run, None, slurm_error="`squeue -h` did not answer") == "unknown"


@pytest.fixture
def fake_slurm(tmp_path: Path):
    """Stand-in sbatch/sinfo/scontrol/squeue/sacct on PATH; `behave(name, script)` sets one."""
    bin_dir = tmp_path / "fake-slurm"
    bin_dir.mkdir()

    def behave(name: str, body: str) -> None:
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)

    for name in ("sbatch", "sinfo", "scontrol", "squeue", "sacct", "scancel"):
        behave(name, "echo 'should not have been called' >&2; exit 3")
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CHATSPACE_SLURM_TIMEOUT": "2"}
    return behave, env


ARGS = ["submit", "embed", "--dataset", str(PYDOCS), "--text-field", "text", "--n", "20",
        "--executor", "slurm"]


@pytest.mark.parametrize("scontrol, expected", [
    ("echo 'slurm_load_ctl_conf error: Unable to contact slurm controller' >&2; exit 1",
     "cannot ask the SLURM controller: `scontrol show` failed: slurm_load_ctl_conf error: "
     "Unable to contact slurm controller"),
    ("sleep 30", "cannot ask the SLURM controller: `scontrol show` did not answer within 2 s"),
])
def test_unreachable_controller_is_exit_2_before_anything_is_written(root, fake_slurm,
                                                                    scontrol, expected):
    behave, env = fake_slurm
    behave("scontrol", scontrol)
    result = chatspace(*ARGS, root=root, env=env, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"chatspace: error: {expected}"
    assert files_under(root) == []


def test_status_says_when_slurm_cannot_be_asked(root, fake_slurm):
    behave, env = fake_slurm
    run = plan(root, PYDOCS, n=20, array=2)
    run.save_submission({"executor": "slurm", "submitted_at": "2026-01-01T00:00:00+00:00",
                         "arrays": [{"job_id": "77", "tasks": [0, 1],
                                                          "jobs": ["77_0", "77_1"]}],
                         "reduce_job_id": "78"})
    behave("sacct", "exit 1")
    behave("scontrol", "sleep 30")
    result = chatspace("status", str(run.dir), root=root, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "SLURM cannot be asked (`scontrol -o` did not answer within 2 s)" in result.stdout
    assert "task 0: unknown" in result.stdout and "task 1: unknown" in result.stdout
    assert "missing" not in result.stdout
    cancel = chatspace("cancel", str(run.dir), root=root, env=env, timeout=60)
    assert cancel.returncode == 1 and len(cancel.stderr.strip().splitlines()) == 1
    assert "cannot cancel run" in cancel.stderr


def test_polling_backs_off_while_nothing_changes():
    delays, delay = [], POLL_FIRST
    for _ in range(12):
        delay = next_poll(delay, changed=False)
        delays.append(delay)
    assert delays[0] == 3.0 and delays[-1] == POLL_MAX == 60.0
    assert delays == sorted(delays)
    assert next_poll(60.0, changed=True) == POLL_FIRST


def test_status_filters_and_local_reduce_logs(root):
    run = plan(root, PYDOCS, n=20, array=2)
    only = json.loads(chatspace("status", str(run.dir), "--state", "missing", "--json",
                                root=root).stdout)
    assert [t["task"] for t in only["tasks"]] == [0, 1]
    none = json.loads(chatspace("status", str(run.dir), "--failed", "--json").stdout)
    assert none["tasks"] == [] and none["counts"] == {"missing": 2}
    result = chatspace("logs", str(run.dir), "--reduce")
    assert result.returncode == 2 and "has no logs yet" in result.stderr
    both = chatspace("logs", str(run.dir), "--reduce", "--task", "0")
    assert both.returncode == 2 and "exactly one of --task I and --reduce" in both.stderr

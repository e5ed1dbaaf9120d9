"""A run started by hand with the sbatch lines `plan` prints, on the real dev cluster
(MaxArraySize=5): the lines carry the spec's resources and split the arrays with an offset, and
`status`, `logs`, `cancel` and `resume` handle the run as they handle one from `submit`."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest

from chatspace.runs.files import read_json
from tests.helpers import PYDOCS, REPO, chatspace, embed, open_run, read_run, wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]


def status(run_dir: str) -> dict:
    out = chatspace("status", run_dir, "--json", timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def job_fields(job: str) -> dict[str, str]:
    text = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True,
                          text=True, check=True, timeout=60).stdout.splitlines()[0]
    return dict(f.split("=", 1) for f in text.split() if "=" in f)


def test_a_run_started_with_the_templates_is_first_class(root, tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(f"""
[dataset]
name = "{PYDOCS}"
text_field = "text"
[sampling]
n = 160
seed = 3
[run]
array = 7
part_rows = 2
[model]
batch_size = 2
[slurm]
partition = "debug"
time = "0:20:00"
mem = "1500M"
array_parallelism = 2
[slurm.reduce]
mem = "600M"
""")
    planned = chatspace("plan", "embed", str(spec), "--run-id", "by-hand", "--json", root=root)
    assert planned.returncode == 0, planned.stderr
    out = json.loads(planned.stdout)
    run = open_run(out["run_dir"])
    lines = out["sbatch"]
    assert "--array=0-4%2" in lines[1] and lines[1].endswith(f" {run.dir} 0)")
    assert "--array=0-1%2" in lines[2] and lines[2].endswith(f" {run.dir} 5)")
    assert "--dependency=afterok:$a0:$a1" in lines[3]
    script = "\n".join([*lines[:3], f"echo $a0 $a1 $({lines[3]})"])
    queued = subprocess.run(["bash", "-euc", script], capture_output=True, text=True, cwd=REPO,
                            timeout=120)
    assert queued.returncode == 0, queued.stderr
    first, second, reduce = queued.stdout.split()

    fields = job_fields(first)  # the spec's resources reached SLURM
    assert (fields["Partition"], fields["TimeLimit"], fields["ArrayTaskThrottle"]) == \
        ("debug", "00:20:00", "2")
    assert fields["MinMemoryNode"] == "1500M" and fields["StdOut"].startswith(str(run.log_dir))
    assert job_fields(reduce)["MinMemoryNode"] == "600M"

    # queued and running: every task has its job, before and after it starts
    state = wait_until(lambda: (s := status(str(run.dir)))["counts"].get("running") and s,
                       timeout=300, what="a running task")
    running = [t for t in state["tasks"] if t["state"] == "running"]
    # the first array runs two at a time: at least three of its five tasks still wait
    pending = [t for t in state["tasks"] if t["state"] == "pending"]
    assert len(pending) >= 3 and all(t["slurm"]["state"] == "PENDING" for t in pending), pending
    assert state["reduce"]["job_id"] == reduce and state["reduce"]["state"] == "PENDING"
    started = wait_until(lambda: [t for t in status(str(run.dir))["tasks"]
                                  if t["attempts"] and t["state"] == "running"],
                         timeout=120, what="a running task's attempt record")
    assert started[0]["node"] == socket.gethostname() and started[0]["elapsed_seconds"] >= 0
    assert running
    logs = chatspace("logs", str(run.dir), "--task", str(started[0]["task"]))
    assert logs.returncode == 0, logs.stderr
    assert f"task {started[0]['task']} of run by-hand starting on" in logs.stdout

    refused = chatspace("resume", str(run.dir), "--executor", "slurm", root=root)
    assert refused.returncode == 2 and "still has queued or running jobs" in refused.stderr
    cancelled = chatspace("cancel", str(run.dir))
    assert cancelled.returncode == 0, cancelled.stderr
    for job in (f"{second}_1", reduce):
        assert job in cancelled.stdout.strip().split(": ", 1)[1].split(", ")
    wait_until(lambda: "nothing to cancel" in chatspace("cancel", str(run.dir)).stdout,
               timeout=60, what="the queue to empty")
    assert not run.manifest_path.exists()

    resumed = chatspace("resume", str(run.dir), "--executor", "slurm", "--wait", "--json",
                        root=root, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    final = status(str(run.dir))
    assert final["counts"] == {"done": 7} and final["manifest"] == str(run.manifest_path)
    assert read_json(run.manifest_path)["rows_total"] == 160
    again = embed(root, PYDOCS, "same-spec", n=160, array=7, sampling={"seed": 3},
                  run={"part_rows": 2}, model={"batch_size": 2})
    drop = ["run_id", "created_at"]
    assert read_run(run).drop(drop).equals(read_run(again).drop(drop))

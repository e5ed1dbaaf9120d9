"""The SLURM path against a real single-node cluster (hpc/dev-cluster.sh, MaxArraySize=5):
submission through submitit, status, resume, cancel, requeue, and bad SLURM input."""

from __future__ import annotations

import json
import re
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from chatspace.runs.files import read_json, sha256_file
from chatspace.runs.task import run_task as run_embed_task
from tests.helpers import (
    PYDOCS,
    chatspace,
    embed,
    files_under,
    open_run,
    read_run,
    shard,
    wait_until,
)

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout


def submit(root: Path, *args: str, n: int = 40, array: int = 4,
           data: Path = PYDOCS) -> subprocess.CompletedProcess:
    return chatspace("submit", "embed", "--dataset", str(data), "--text-field", "text",
                     "--n", str(n), "--seed", "1", "--array", str(array),
                     "--executor", "slurm", *args, root=root)


def status(run_dir: str) -> dict:
    out = chatspace("status", run_dir, "--json", timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_submit_wait_matches_local_rows_and_bytes(root):
    result = submit(root, "--wait", "--json", "--run-id", "on-slurm")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert Path(out["manifest"]).exists()
    assert chatspace("verify", out["run_dir"]).returncode == 0
    record = out["submission"]
    assert len(record["arrays"]) == 1 and record["arrays"][0]["tasks"] == [0, 1, 2, 3]
    assert record["reduce_sbatch_parameters"]["dependency"] == \
        f"afterok:{record['arrays'][0]['job_id']}"
    assert read_json(Path(out["run_dir"]) / "submissions.json")["submissions"][0]["reduce_job_id"]
    scripts = [Path(p).read_text() for p in record["sbatch_scripts"]]
    assert "#SBATCH --array=0-3%4" in scripts[0] and "#SBATCH --requeue" in scripts[0]
    assert record["sbatch_parameters"]["array_parallelism"] == 4  # the throttle in force
    assert "#SBATCH --dependency=afterok:" in scripts[1]
    reduce = record["reduce_sbatch_parameters"]  # its own small CPU job
    assert (reduce["mem"], reduce["time"], reduce["cpus_per_task"]) == ("4G", 30, 1)
    assert "#SBATCH --mem=4G" in scripts[1] and "gpus" not in scripts[1]

    manifest = Path(out["manifest"])
    before = (sha256_file(manifest), manifest.stat().st_mtime_ns)
    again = chatspace("resume", out["run_dir"], "--json")  # finished and verified: a no-op
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["submission"]["nothing_to_do"] is True
    assert (sha256_file(manifest), manifest.stat().st_mtime_ns) == before
    assert len(read_json(Path(out["run_dir"]) / "submissions.json")["submissions"]) == 1

    slurm_run = open_run(out["run_dir"])
    local = embed(root, PYDOCS, "on-debug", n=40, array=4)
    drop = ["run_id", "created_at"]
    assert read_run(slurm_run).drop(drop).equals(read_run(local).drop(drop))

    shas = [sha256_file(shard(slurm_run, t)) for t in range(4)]
    for t in range(4):  # the same planned tasks run again by the debug and local executors
        slurm_run.completion_path(t).unlink()
        shard(slurm_run, t).unlink()
    for t in (0, 3):
        run_embed_task(slurm_run, t)  # in this process, as the debug executor does
    local_rerun = chatspace("resume", out["run_dir"], "--executor", "local")
    assert local_rerun.returncode == 0, local_rerun.stderr
    assert [sha256_file(shard(slurm_run, t)) for t in range(4)] == shas  # byte-identical
    # one thread policy whatever executes a task: the spec's CPUs per task (default 1)
    assert {slurm_run.completion(t).threads for t in range(4)} == {1}


def test_large_array_is_split_at_max_array_size_and_reduce_waits(root):
    result = submit(root, "--wait", "--json", n=14, array=7)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    arrays = out["submission"]["arrays"]
    assert [a["tasks"] for a in arrays] == [[0, 1, 2, 3, 4], [5, 6]]
    assert read_json(Path(out["manifest"]))["rows_total"] == 14
    dependency = out["submission"]["reduce_sbatch_parameters"]["dependency"]
    assert dependency == "afterok:" + ":".join(a["job_id"] for a in arrays)

    ids = ",".join([a["job_id"] for a in arrays] + [out["submission"]["reduce_job_id"]])
    rows = [line.split("|") for line in sh("sacct", "-n", "-P", "-X", "-j", ids, "-o",
                                           "JobID,Start,End").splitlines()]
    times = {job: (datetime.fromisoformat(s), datetime.fromisoformat(e)) for job, s, e in rows}
    reduce_start = times[out["submission"]["reduce_job_id"]][0]
    task_ends = [end for job, (_, end) in times.items() if "_" in job]
    assert len(task_ends) == 7
    assert reduce_start >= max(task_ends)


def test_failed_task_shows_in_status_and_resume_completes(root, tmp_path):
    data = tmp_path / "two-files"
    data.mkdir()
    rows = [json.loads(line) for line in PYDOCS.read_text().splitlines()[:40]]
    for k in range(2):
        pq.write_table(pa.Table.from_pylist(rows[k * 20:(k + 1) * 20]),
                       data / f"part-{k}.parquet")
    planned = chatspace("plan", "embed", "--dataset", str(data), "--text-field", "text",
                        "--p", "1", "--seed", "1", "--array", "2", "--json", root=root)
    run_dir = json.loads(planned.stdout)["run_dir"]
    good = (data / "part-1.parquet").read_bytes()
    (data / "part-1.parquet").write_bytes(b"this is not parquet any more")  # task 1 fails

    result = chatspace("resume", run_dir, "--executor", "slurm", "--wait", root=root)
    assert result.returncode == 1
    assert "task 1: failed" in result.stderr and "log:" in result.stderr
    state = status(run_dir)
    assert [t["state"] for t in state["tasks"]] == ["done", "failed"]
    failed = state["tasks"][1]
    assert failed["slurm"]["state"] == "FAILED" and Path(failed["log"]).exists()
    assert any("Parquet" in line or "parquet" in line for line in failed["error"])
    logs = chatspace("logs", run_dir, "--task", "1")
    assert logs.returncode == 0 and "_0_log.err <==" in logs.stdout
    assert re.search(r"run \S+: \d+/40 rows; ", result.stderr)  # no terminal: plain lines
    only_failed = json.loads(chatspace("status", run_dir, "--failed", "--json").stdout)
    assert [t["task"] for t in only_failed["tasks"]] == [1]
    tailed = chatspace("logs", run_dir, "--task", "1", "--tail", "2")
    sections = [s for s in tailed.stdout.split("==> ") if s]
    assert len(sections) == 2 and all(len(s.splitlines()) <= 3 for s in sections)

    (data / "part-1.parquet").write_bytes(good)
    resumed = chatspace("resume", run_dir, "--wait", "--json", root=root)
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads(resumed.stdout)["submission"]
    assert [a["tasks"] for a in record["arrays"]] == [[1]]  # only the missing task
    reduce_logs = chatspace("logs", run_dir, "--reduce")
    assert f"{record['reduce_job_id']}_0_log.err <==" in reduce_logs.stdout
    assert "manifest written" in reduce_logs.stdout
    manifest = read_json(Path(json.loads(resumed.stdout)["manifest"]))

    fresh = embed(root, data, "fresh", n=40, array=2, sampling={"n": None, "p": 1.0})
    expected = read_json(fresh.manifest_path)
    same = ("rows_total", "rows_skipped", "sampling", "embedding_dim", "model")
    assert {k: manifest[k] for k in same} == {k: expected[k] for k in same}
    drop = ["run_id", "created_at"]
    assert read_run(open_run(run_dir)).drop(drop).equals(read_run(fresh).drop(drop))


def test_task_killed_without_result_is_reported_quickly(root):
    result = submit(root, "--json", "--run-id", "to-kill", "--part-rows", "10",
                    "--batch-size", "4", n=400, array=2)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    job = out["submission"]["arrays"][0]["jobs"][0]
    wait_until(lambda: status(out["run_dir"])["tasks"][0]["state"] == "running",
               what="task 0 running")
    sh("scancel", "--signal=KILL", job)  # the task dies without writing a result
    started = time.time()
    state = wait_until(lambda: (s := status(out["run_dir"]))["tasks"][0]["state"] == "failed"
                       and s, timeout=60, what="task 0 reported failed")
    assert time.time() - started < 30
    assert state["tasks"][0]["slurm"]["state"] in ("FAILED", "CANCELLED")
    cancel = chatspace("cancel", out["run_dir"])
    assert cancel.returncode == 0, cancel.stderr
    cancelled = re.match(r"cancelled (\d+) job\(s\) of run to-kill: (.+)$", cancel.stdout.strip())
    assert cancelled and int(cancelled.group(1)) >= 2, cancel.stdout  # task 1 and the reduce
    assert out["submission"]["reduce_job_id"] in cancelled.group(2).split(", ")
    wait_until(lambda: all(t["state"] not in ("running", "pending")
                           for t in status(out["run_dir"])["tasks"]), timeout=60,
               what="the run's jobs to leave the queue")
    wait_until(lambda: "no queued or running jobs" in chatspace("cancel", out["run_dir"]).stdout,
               timeout=60, what="cancel to find nothing left")


def test_requeued_task_continues_from_its_last_part(root):
    result = submit(root, "--json", "--run-id", "requeued", "--part-rows", "50",
                    "--batch-size", "4", n=1000, array=1)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    run = open_run(out["run_dir"])
    job = out["submission"]["arrays"][0]["jobs"][0]
    assert job.isdigit(), "a one-task array is submitted as a plain job"
    wait_until(lambda: len(list(run.parts_dir(0).glob("part-*.json"))) >= 2, what="2 parts")
    sh("scontrol", "requeue", job)
    # SLURM holds a requeued job for two minutes (reason BeginTime); an administrator may
    # release it at once, which is not what this test is about
    wait_until(lambda: "BeginTime" in sh("squeue", "-h", "-j", job, "-o", "%r"),
               what="the requeued job to wait out its begin time")
    sh("scontrol", "update", f"JobId={job}", "StartTime=now")
    wait_until(lambda: run.manifest_path.exists(), timeout=400, what="the manifest")
    assert read_json(run.manifest_path)["rows_total"] == 1000
    assert status(out["run_dir"])["tasks"][0]["attempts"] == 2
    # both attempts wrote to the same log (appended): each shows only its own part
    first, second = (chatspace("logs", out["run_dir"], "--task", "0", "--attempt", k).stdout
                     for k in ("1", "2"))
    assert "task 0 of run requeued starting on" in first and "resuming, " not in first
    assert "task 0 of run requeued starting on" in second
    assert "resuming, " in second and "of 20 parts already committed" in second
    assert "task 0 done" in second and "task 0 done" not in first


@pytest.mark.parametrize(("args", "expected"), [
    (["--partition", "no-such-partition"], "slurm.partition (--partition) 'no-such-partition'"),
    (["--time", "ten minutes"], "slurm.time (--time) 'ten minutes' is not a SLURM time"),
    (["--array", "0"], "run.array (--array) must be >= 1, got 0"),
    (["--container", "/no/such/image.sif"], "container image not found: /no/such/image.sif"),
    (["--sbatch-arg", "nodash"], "--sbatch-arg 'nodash' must look like --key=value"),
])
def test_bad_slurm_input_submits_nothing(root, args, expected):
    result = chatspace("submit", "embed", "--dataset", str(PYDOCS), "--text-field", "text",
                       "--n", "10", "--executor", "slurm", *args, root=root)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert files_under(root) == []
    # no job of this root was queued (other tests' jobs may be: test workers share the cluster)
    assert str(root) not in sh("squeue", "-h", "-o", "%o %Z")


def test_job_states_without_accounting_fall_back_to_scontrol(slurm_cluster, tmp_path,
                                                              monkeypatch):
    from chatspace.runs.slurm_cli import JobState, job_states

    array = sh("sbatch", "--parsable", "--array=0-1", "--wrap", "exit 3",
               f"--output={tmp_path}/%A_%a.out").strip()
    single = sh("sbatch", "--parsable", "--wrap", "true", f"--output={tmp_path}/%j.out").strip()
    ids = [f"{array}_0", f"{array}_1", single]
    with_acct = wait_until(lambda: (s := job_states(ids)) and all(
        j in s and s[j].state in ("FAILED", "COMPLETED") for j in ids) and s,
        timeout=60, what="the jobs to finish in sacct")
    no_acct = tmp_path / "slurm.conf"
    no_acct.write_text(re.sub(r"(?m)^AccountingStorageType=.*$",
                              "AccountingStorageType=accounting_storage/none",
                              Path(slurm_cluster).read_text()))
    monkeypatch.setenv("SLURM_CONF", str(no_acct))
    assert subprocess.run(["sacct", "-n", "-j", single], capture_output=True).returncode != 0
    without = job_states(ids)
    for job in ids:
        assert without[job].state == with_acct[job].state
        assert without[job].exit_code == with_acct[job].exit_code
    assert without[f"{array}_0"] == JobState("FAILED", "3:0")


def test_a_reduce_that_fails_to_submit_leaves_its_arrays_visible_and_cancellable(root):
    result = submit(root, "--run-id", "no-reduce", "--reduce-mem", "100T", "--part-rows", "10",
                    "--batch-size", "4", n=400, array=2)
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("chatspace: error: submission of run no-reduce stopped: ")
    assert "Requested node configuration is not available" in error
    assert "arrays already queued: " in error and "Traceback" not in result.stderr
    run_dir = str(root / "runs" / "no-reduce")
    record = read_json(Path(run_dir) / "submissions.json")["submissions"][-1]
    assert len(record["arrays"]) == 1 and record["reduce_job_id"] is None and record["error"]
    assert record["arrays"][0]["job_id"] in error
    states = [t["state"] for t in status(run_dir)["tasks"]]
    assert set(states) <= {"pending", "running", "partial", "done"}, states
    cancel = chatspace("cancel", run_dir)
    assert cancel.returncode == 0, cancel.stderr
    assert cancel.stdout.startswith("cancelled ") and "no-reduce" in cancel.stdout
    assert set(cancel.stdout.strip().split(": ")[1].split(", ")) <= set(
        record["arrays"][0]["jobs"])

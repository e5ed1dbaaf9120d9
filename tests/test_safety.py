"""Nothing outside the root, nothing lost, no paid call without --execute, one execution of a
task at a time: each case reproduces a fault a user or a crash caused, against real processes,
real signals and real files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from chatspace.runs.executors import launch
from chatspace.runs.files import atomic_path
from chatspace.runs.lease import holder, holding
from chatspace.specs import SlurmConfig
from tests.helpers import PYDOCS, REPO, chatspace, embed, files_under, open_run, plan, wait_until
from tests.openai_server import FakeOpenAI

EMBED = ["--dataset", str(PYDOCS), "--text-field", "text"]


def run_json(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def one_line_error(result: subprocess.CompletedProcess, code: int, expected: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert expected in lines[0], lines[0]


# 1. download-dataset --split deleted a directory outside the root
def test_download_dataset_never_leaves_the_root_nor_deletes_what_it_did_not_record(tmp_path):
    root, victim = tmp_path / "ws", tmp_path / "precious"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    for split in (str(victim), "../../../precious", "..", ".hidden", "a\nb"):
        result = chatspace("download-dataset", str(PYDOCS), "--split", split, root=root)
        one_line_error(result, 2, "dataset.split (--split)")
    assert (victim / "keep.txt").read_text() == "mine"
    assert files_under(root) == []
    # a directory at the destination that chatspace did not record is never replaced
    dest = root / "datasets" / "raw" / "local" / "pydocs" / "train"
    dest.mkdir(parents=True)
    (dest / "notes.txt").write_text("by hand")
    result = chatspace("download-dataset", str(PYDOCS), "--split", "train", root=root)
    one_line_error(result, 2, "is not a recording of chatspace's")
    assert (dest / "notes.txt").read_text() == "by hand"
    (dest / "notes.txt").unlink()
    dest.rmdir()
    assert chatspace("download-dataset", str(PYDOCS), "--split", "train",
                     root=root).returncode == 0
    assert chatspace("download-dataset", str(PYDOCS), "--split", "train",  # replaces its own
                     root=root).returncode == 0
    assert (dest / "_info.json").is_file()


# 2. embed-hf --backend openai called the paid API without --execute
def test_embed_hf_with_the_openai_backend_is_a_dry_run_without_execute(tmp_path):
    spec = tmp_path / "openai.toml"
    spec.write_text(f'[dataset]\nname = "{PYDOCS}"\ntext_field = "text"\n[sampling]\nn = 20\n'
                    '[model]\nbackend = "openai"\n')
    with FakeOpenAI(dim=16) as server:
        for args in (["embed-hf", *EMBED, "--n", "20", "--backend", "openai"],
                     ["embed-hf", str(spec)]):
            result = chatspace(*args, root=tmp_path / "ws", env=server.env())
            assert result.returncode == 0, result.stderr
            assert "dry run: nothing written" in result.stdout
        assert server.log == [], "no request may reach the API without --execute"
    assert files_under(tmp_path / "ws") == []


# 3. outputs escaped the root through --split and --name
def test_names_from_input_never_put_outputs_outside_the_root(tmp_path):
    root, elsewhere = tmp_path / "ws", tmp_path / "elsewhere"
    result = chatspace("plan", "embed", *EMBED, "--n", "5", "--split", str(elsewhere),
                       root=root)
    one_line_error(result, 2, "dataset.split (--split)")
    result = chatspace("plan", "steer", "--model", str(tmp_path), "--prompts", str(PYDOCS),
                       "--name", "../../../../x", root=root)
    one_line_error(result, 2, "run.name (--name) '../../../../x' contains a path separator")
    for run_id in ("x" * 300, "a\nb", "-rf", "../up"):
        one_line_error(chatspace("plan", "embed", *EMBED, "--n", "5", "--run-id", run_id,
                                 root=root), 2, "--run-id")
    assert not elsewhere.exists() and files_under(root) == []


# 4. a temp file in a records directory was read as a record
def test_temp_files_beside_records_are_not_records(root):
    run = open_run(run_json(chatspace("submit", "embed", *EMBED, "--n", "20", "--array", "2",
                                      "--executor", "local", "--json", root=root))["run_dir"])
    for folder in (run.dir / "attempts" / "task-00000", run.dir / "tasks"):
        (folder / ".tmp-node1-123-x.json").write_text('{"torn": ')
    for args in (["status", str(run.dir)], ["logs", str(run.dir), "--task", "0"],
                 ["verify", str(run.dir)], ["query", "--list", "--root", str(root)],
                 ["resume", str(run.dir), "--executor", "debug"]):
        result = chatspace(*args)
        assert result.returncode == 0 and "Traceback" not in result.stderr, (args, result.stderr)


# 5. one torn completion record broke every command
def test_a_torn_completion_record_is_a_task_not_done_and_resume_redoes_it(root):
    run = embed(root, PYDOCS, n=30, array=3)
    shard = run.output_paths(2)["shard"].read_bytes()
    record = run.completion_path(2)
    record.write_bytes(record.read_bytes()[: record.stat().st_size // 2])
    status = run_json(chatspace("status", str(run.dir), "--json"))
    task = status["tasks"][2]
    assert task["state"] == "missing" and "does not parse as JSON" in task["error"][0]
    for args, code in ((["verify", str(run.dir)], 0), (["report", str(run.dir), "-o",
                                                        str(root / "r.html")], 0),
                       (["query", "--list", "--root", str(root)], 0),
                       (["run", "reduce", str(run.dir)], 1)):
        result = chatspace(*args)
        assert result.returncode == code and "Traceback" not in result.stderr, (args, result)
    reduce = chatspace("run", "reduce", str(run.dir))
    assert "task 2:" in reduce.stderr and "does not parse" in reduce.stderr
    assert chatspace("resume", str(run.dir), "--executor", "local").returncode == 0
    assert run.output_paths(2)["shard"].read_bytes() == shard
    assert run_json(chatspace("status", str(run.dir), "--json"))["counts"] == {"done": 3}


# 6. two executions of one task destroyed each other
def test_a_task_runs_once_at_a_time(root):
    run = plan(root, PYDOCS, n=20, array=2)
    with holding(run, 0) as owner:
        assert holder(run, 0) == owner
        busy = chatspace("run", "task", str(run.dir), "--task", "0")
        one_line_error(busy, 75, f"task 0 of run {run.run_id} is already running (pid "
                                f"{os.getpid()}")
        status = run_json(chatspace("status", str(run.dir), "--json"))
        assert status["tasks"][0]["state"] == "running"  # a live local task is told apart
        refused = chatspace("resume", str(run.dir), "--executor", "local")
        one_line_error(refused, 2, "is being run elsewhere: task 0 by pid")
    assert holder(run, 0) is None
    assert run_json(chatspace("status", str(run.dir), "--json"))["tasks"][0]["state"] == \
        "missing"


def test_concurrent_submits_of_one_run_id_leave_one_good_run(root):
    args = [sys.executable, "-m", "chatspace", "submit", "embed", *EMBED, "--n", "60",
            "--array", "2", "--part-rows", "10", "--run-id", "same", "--executor", "local",
            "--root", str(root)]
    procs = [subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [(p.wait(600), *p.communicate()) for p in procs]
    for code, _, err in outs:  # each waited for the other's tasks, or refused naming them
        assert code == 0 or (code == 2 and "is being run elsewhere" in err), err
        assert "Traceback" not in err, err
    assert 0 in [code for code, _, _ in outs]
    verify = chatspace("verify", "same", root=root)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_sigterm_to_a_local_submit_stops_its_tasks_and_resume_continues(root, tmp_path):
    data = tmp_path / "big.jsonl"
    data.write_text(PYDOCS.read_text() * 2)
    proc = subprocess.Popen([sys.executable, "-m", "chatspace", "submit", "embed",
                             "--dataset", str(data), "--text-field", "text", "--n", "300",
                             "--array", "2", "--part-rows", "50", "--run-id", "term",
                             "--executor", "local", "--root", str(root)],
                            cwd=REPO, stderr=subprocess.PIPE, text=True)
    run = wait_until(lambda: (root / "runs" / "term" / "plan.json").exists()
                     and open_run(root / "runs" / "term"), what="the plan")
    pids = wait_until(lambda: [o.pid for t in range(2) if (o := holder(run, t))]
                      if all(holder(run, t) for t in range(2)) else None, what="both tasks")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "stopped by SIGTERM" in err, err
    for pid in pids:  # no orphan: each task was stopped before submit exited
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    states = {t["state"] for t in run_json(chatspace("status", str(run.dir),
                                                     "--json"))["tasks"]}
    assert states <= {"partial", "missing"}, states
    assert chatspace("resume", str(run.dir), "--executor", "local").returncode == 0
    assert chatspace("verify", str(run.dir)).returncode == 0


# 8. a part whose rows were all skipped crashed the task
def test_a_part_whose_rows_are_all_skipped_commits_an_empty_part(root, tmp_path):
    rows = [json.loads(line) for line in PYDOCS.read_text().splitlines()[:8]]
    for row in rows[:4]:
        row["text"] = ""
    data = tmp_path / "empties.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = chatspace("submit", "embed", "--dataset", str(data), "--text-field", "text",
                       "--p", "1", "--part-rows", "2", "--executor", "debug", "--json",
                       root=root)
    summary = run_json(result)
    manifest = json.loads(Path(summary["manifest"]).read_text())
    assert manifest["rows_total"] == 4 and manifest["rows_skipped"]["total"] == 4


# 9. a same-size change: status and submit stat sizes, --verify / verify / resume hash
def test_a_flipped_byte_is_caught_where_the_readme_says(root):
    run = embed(root, PYDOCS, n=20, array=2)
    shard = run.output_paths(1)["shard"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    cheap = run_json(chatspace("status", str(run.dir), "--json"))
    assert cheap["tasks"][1]["state"] == "done"  # sizes only, as the README says
    hashed = run_json(chatspace("status", str(run.dir), "--verify", "--json"))
    assert hashed["tasks"][1]["state"] == "lost"
    assert "sha256 differs" in hashed["tasks"][1]["error"][0]
    verify = chatspace("verify", str(run.dir))
    assert verify.returncode == 1 and "task 1:" in verify.stdout + verify.stderr
    # a submit of the finished run stats sizes on the login node, reading no shard
    assert launch(run, "debug", slurm=SlurmConfig()) is None
    assert chatspace("resume", str(run.dir), "--executor", "debug").returncode == 0
    assert chatspace("verify", str(run.dir)).returncode == 0


# 10. a moved root: records hold paths relative to the root
def test_a_moved_root_still_reads_and_resumes_into_its_new_place(tmp_path):
    root = tmp_path / "ws"
    run = embed(root, PYDOCS, n=30, array=3)
    assert not Path(run.plan.output_dir).is_absolute()
    shutil.rmtree(run.parts_dir(2), ignore_errors=True)
    run.completion_path(2).unlink()
    run.output_paths(2)["shard"].unlink()
    moved = tmp_path / "ws2"
    root.rename(moved)
    new_dir = moved / "runs" / run.run_id
    status = run_json(chatspace("status", str(new_dir), "--json"))
    assert [t["state"] for t in status["tasks"]] == ["done", "done", "missing"]
    assert chatspace("resume", str(new_dir), "--executor", "debug").returncode == 0
    assert not root.exists(), "nothing may be written under the old root"
    assert chatspace("verify", str(new_dir)).returncode == 0
    manifest = json.loads((moved / open_run(new_dir).plan.manifest_path).read_text())
    assert all(not Path(s["path"]).is_absolute() for s in manifest["shards"])
    assert pq.read_table(moved / manifest["shards"][2]["path"]).num_rows == 10


def test_resume_and_cancel_of_a_never_submitted_run_do_not_need_slurm(root, tmp_path):
    planned = run_json(chatspace("plan", "embed", *EMBED, "--n", "10", "--json", root=root))
    fake = tmp_path / "bin"
    fake.mkdir()
    for name in ("squeue", "sacct", "scontrol"):  # on PATH, but no controller answers
        (fake / name).write_text("#!/bin/sh\necho 'slurm_load_jobs error: Unable to contact "
                                 "slurm controller' >&2\nexit 1\n")
        (fake / name).chmod(0o755)
    broken = {"PATH": f"{fake}:{os.environ['PATH']}"}
    cancelled = chatspace("cancel", planned["run_dir"], env=broken)
    assert cancelled.returncode == 0 and "nothing to cancel" in cancelled.stdout
    result = chatspace("resume", planned["run_dir"], "--executor", "debug", env=broken)
    assert result.returncode == 0, result.stderr


def test_temp_names_carry_host_and_pid_and_vanish(tmp_path):
    with atomic_path(tmp_path / "x.json") as tmp:
        assert tmp.name.startswith(f".tmp-{socket.gethostname()}-{os.getpid()}-")
        tmp.write_text("{}")
    assert (tmp_path / "x.json").read_text() == "{}" and not tmp.exists()


def test_shm_sweeps_skip_other_users_and_other_pid_namespaces():
    from chatspace.steering import shm

    dead = 2**22 + 12345  # above the default pid_max: no such process
    theirs = shm.SHM_DIR / f"{shm.PREFIX}{dead}-{shm.pid_namespace()}-otheruser"
    elsewhere = shm.SHM_DIR / f"{shm.PREFIX}{dead}-1-othernamespace"
    mine = shm.SHM_DIR / f"{shm.PREFIX}{dead}-{shm.pid_namespace()}-orphan"
    for path in (theirs, elsewhere, mine):
        path.write_bytes(b"x")
    os.chown(theirs, 65534, 65534)  # nobody's
    try:
        assert theirs not in shm.segments()
        shm.sweep()
        assert theirs.exists(), "another user's segment is not ours to remove"
        assert elsewhere.exists(), "a pid of another namespace says nothing here"
        assert not mine.exists(), "our own orphan (dead owner, this namespace) goes"
    finally:
        for path in (theirs, elsewhere, mine):
            path.unlink(missing_ok=True)

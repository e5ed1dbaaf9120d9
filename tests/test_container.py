"""Tasks inside a real Apptainer image (containers/dev-apptainer.sh, containers/dev-image.sh):
the image's runscript and layout, and the same planned run executed on the dev cluster inside
the image through `submit --container`, through `hpc/task.sbatch` with CHATSPACE_IMAGE, and
on the host, giving byte-identical shards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from chatspace.runs.attempts import log_spans
from chatspace.runs.files import read_json, sha256_file
from tests.helpers import PYDOCS, REPO, chatspace, open_run, shard, wait_until

pytestmark = pytest.mark.container


def apptainer(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["apptainer", *args], capture_output=True, text=True, timeout=timeout)


def test_the_image_runs_the_cli_with_the_layout_of_apptainer_def(real_image):
    helped = apptainer("run", str(real_image), "--help")
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("Usage: chatspace")
    inside = apptainer("exec", str(real_image), "sh", "-c",
                       'command -v chatspace; python -c "import sys; print(sys.prefix)"; '
                       "echo $HF_HUB_OFFLINE")
    assert inside.stdout.split() == ["/opt/chatspace/.venv/bin/chatspace",
                                     "/opt/chatspace/.venv", "1"]
    bad = apptainer("exec", "--bind", "/no/such/dir", str(real_image), "true", timeout=60)
    assert bad.returncode != 0 and "/no/such/dir" in bad.stderr


def test_local_run_inside_the_image(real_image, root):
    data = root.parent / "pydocs.jsonl"
    shutil.copy(PYDOCS, data)
    result = apptainer("exec", "--bind", str(root.parent), str(real_image), "chatspace",
                       "submit", "embed", "--dataset", str(data), "--text-field", "text",
                       "--n", "10", "--executor", "local", "--root", str(root), "--json",
                       timeout=900)
    assert result.returncode == 0, result.stderr
    assert Path(json.loads(result.stdout)["manifest"]).exists()


def task_log(run, task: int) -> str:
    return "".join(span.read() for span in log_spans(run, task))


@pytest.mark.slurm
def test_one_planned_run_inside_the_image_and_on_the_host_gives_the_same_bytes(
        real_image, slurm_cluster, root):
    data = root.parent / "pydocs.jsonl"
    shutil.copy(PYDOCS, data)
    submitted = chatspace("submit", "embed", "--dataset", str(data), "--text-field", "text",
                          "--n", "30", "--seed", "4", "--array", "2", "--executor", "slurm",
                          "--container", str(real_image), "--wait", "--json", root=root,
                          timeout=900)
    assert submitted.returncode == 0, submitted.stderr
    out = json.loads(submitted.stdout)
    run = open_run(out["run_dir"])
    shas = [sha256_file(shard(run, t)) for t in range(2)]
    for task in range(2):  # ran inside the image, through the --nv line container.sh builds
        text = task_log(run, task)
        assert f"chatspace: apptainer exec --nv --bind {root} " in text
        assert "(python /opt/chatspace/.venv, " in text

    def forget_outputs() -> None:
        for task in range(2):
            run.completion_path(task).unlink()
            shard(run, task).unlink()

    # the same planned run through the sbatch template, inside the image
    forget_outputs()
    env = {**os.environ, "CHATSPACE_IMAGE": str(real_image), "CHATSPACE_ROOT": str(root)}
    array = subprocess.run(["sbatch", "--parsable", "--array=0-1",
                            f"--output={run.log_dir}/t-%A_%a.out", "hpc/task.sbatch",
                            str(run.dir)], check=True, cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=60).stdout.strip()
    wait_until(lambda: not subprocess.run(["squeue", "-h", "-j", array], capture_output=True,
                                          text=True, timeout=60).stdout.strip(),
               timeout=600, what="the template's tasks to leave the queue")
    assert [sha256_file(shard(run, t)) for t in range(2)] == shas
    assert "(python /opt/chatspace/.venv, " in task_log(run, 0)

    # and on the host, without a container
    forget_outputs()
    resumed = chatspace("resume", str(run.dir), "--executor", "debug", root=root, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert [sha256_file(shard(run, t)) for t in range(2)] == shas
    assert read_json(run.manifest_path)["rows_total"] == 30

"""hpc/ sbatch templates on the real dev cluster, the container wrapper's command lines, and a
static check of Apptainer.def (Apptainer itself is not installable here: Debian bookworm has
no package, so the `apptainer` on PATH in these tests is a recording stand-in that logs its
command line and runs the command without a container)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from chatspace.jobs import JOB_TYPES
from chatspace.runs.commands import reduce_command, task_command
from chatspace.runs.record import Run, read_json, sha256_file
from tests.conftest import PYDOCS, REPO, chatspace, wait_until
from tests.helpers import open_run, read_run, shard

DEF = REPO / "Apptainer.def"
SECTIONS = {"arguments", "setup", "files", "post", "environment", "runscript", "startscript",
            "test", "labels", "help"}
SHIM = """#!/bin/sh
# Recording stand-in for `apptainer exec --nv --bind R --bind H IMAGE CMD...`.
echo "apptainer $*" >> "$APPTAINER_RECORD"
[ "$1" = exec ] || exit 64
shift 7
exec "$@"
"""


@pytest.fixture
def apptainer_shim(tmp_path: Path, monkeypatch) -> Path:
    bin_dir = tmp_path / "shim-bin"
    bin_dir.mkdir()
    (bin_dir / "apptainer").write_text(SHIM)
    (bin_dir / "apptainer").chmod(0o755)
    record = tmp_path / "apptainer-calls.txt"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("APPTAINER_RECORD", str(record))
    return record


def parse_def(text: str) -> tuple[list[dict[str, str]], dict[str, str], dict[str, str]]:
    """Headers of each stage, sections (name -> body), and %arguments defaults."""
    stages, sections, current = [], {}, None
    for line in text.splitlines():
        if line.startswith("%"):
            current = line[1:].strip()
            sections[current] = ""
        elif current is None or re.match(r"^(Bootstrap|From|Stage):", line):
            if line.startswith("Bootstrap:"):
                stages.append({})
                current = None
            if ":" in line and not line.startswith("#"):
                key, value = line.split(":", 1)
                stages[-1][key.strip()] = value.strip()
        else:
            sections[current] += line + "\n"
    args = dict(line.strip().split("=", 1) for line in sections.get("arguments", "").splitlines()
                if "=" in line)
    return stages, sections, args


def substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: args[m.group(1)], text)


def test_apptainer_def_is_well_formed_and_pinned():
    stages, sections, args = parse_def(DEF.read_text())
    assert [s["Bootstrap"] for s in stages] == ["docker", "docker"]
    for stage in stages:
        image = substitute(stage["From"], args)
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and re.search(r"\d+\.\d+", tag), image
    assert substitute(stages[-1]["From"], args).startswith("nvidia/cuda:")
    assert "runtime" in args["CUDA_IMAGE_TAG"]
    for name in sections:
        assert name.split()[0] in SECTIONS, f"unknown section %{name}"
    for name in ("post", "environment", "runscript", "test"):
        body = substitute(sections[name], args)
        check = subprocess.run(["sh", "-n"], input=body, text=True, capture_output=True)
        assert check.returncode == 0, f"%{name}: {check.stderr}"
    post = sections["post"]
    assert "uv sync --frozen" in post
    for var in ("UV_CACHE_DIR=/opt/", "UV_PYTHON_INSTALL_DIR=/opt/", "UV_PROJECT_ENVIRONMENT"):
        assert var in post
    assert "/usr/local/bin/uv" in sections["files from uv"]
    assert "HF_HOME" in sections["environment"] and ".venv/bin:$PATH" in sections["environment"]
    assert sections["runscript"].strip() == 'exec chatspace "$@"'
    assert "import torch, sentence_transformers, vllm" in sections["test"]
    assert "chatspace --help" in sections["test"]
    assert "{{ VERSION }}" in sections["labels"] and "{{ GIT_SHA }}" in sections["labels"]
    assert sections["help"].strip()
    assert not re.search(r"(HF_TOKEN|OPENAI_API_KEY|API_KEY)\s*=", DEF.read_text())


def test_apptainer_pins_agree_with_pyproject_lock_and_build_script():
    _, _, args = parse_def(DEF.read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    python = tuple(int(p) for p in args["PYTHON_VERSION"].split("."))
    minimum = tuple(int(p) for p in project["project"]["requires-python"].lstrip(">=").split("."))
    assert python >= minimum
    assert lock["requires-python"] == project["project"]["requires-python"]
    assert args["PYTHON_VERSION"].startswith((REPO / ".python-version").read_text().strip())
    assert project["tool"]["uv"]["required-version"] == f"=={args['UV_VERSION']}"
    root = next(p for p in lock["package"] if p["name"] == "chatspace")
    locked = {r["name"] for r in root["metadata"]["requires-dist"]}
    declared = {re.split(r"[<>=!~\[ ]", d)[0] for d in project["project"]["dependencies"]}
    declared |= {re.split(r"[<>=!~\[ ]", d)[0] for extra in
                 project["project"]["optional-dependencies"].values() for d in extra}
    assert locked == declared, "uv.lock is stale: run `uv lock`"
    build = (REPO / "containers" / "build.sh").read_text()
    for key in ("UV_VERSION", "PYTHON_VERSION", "CUDA_IMAGE_TAG"):
        assert f"${{{key}:-{args[key]}}}" in build, f"build.sh default for {key}"


def test_templates_run_the_shared_task_and_reduce_commands():
    run = Run(Path("/r"), "x", JOB_TYPES["embed"])
    embed = (REPO / "hpc" / "task.sbatch").read_text()
    reduce = (REPO / "hpc" / "reduce.sbatch").read_text()
    task_line = " ".join(task_command(run, '"$TASK"')).replace("/r/runs/x", '"$RUN"')
    assert task_line in embed
    assert 'TASK=$(( ${2:-0} + SLURM_ARRAY_TASK_ID ))' in embed  # the array's offset
    assert " ".join(reduce_command(run)).replace("/r/runs/x", '"$RUN"') in reduce
    for template in (embed, reduce):
        assert '"$HOME_DIR/containers/run.sh" chatspace' in template
    for default in ("--job-name=", "--time=", "--cpus-per-task=", "--mem=",
                    "--output=logs/%x-%A_%a.out", "--requeue", "--open-mode=append",
                    "--signal=B:USR2@"):
        assert f"#SBATCH {default}" in embed
    assert "##SBATCH --gpus-per-task=1" in embed


def test_container_wrapper_builds_the_apptainer_line(tmp_path, apptainer_shim):
    env = {**os.environ, "CHATSPACE_IMAGE": "/img/chatspace.sif", "CHATSPACE_ROOT": "/ws",
           "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([str(REPO / "containers" / "run.sh"), "echo", "inside"], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout == "inside\n"
    assert apptainer_shim.read_text() == (
        f"apptainer exec --nv --bind /ws --bind {tmp_path / 'hf'} /img/chatspace.sif "
        "echo inside\n")
    env.pop("CHATSPACE_IMAGE")
    plain = subprocess.run([str(REPO / "containers" / "run.sh"), "echo", "host"], env=env,
                           capture_output=True, text=True, check=True)
    assert plain.stdout == "host\n" and apptainer_shim.read_text().count("\n") == 1


def test_plan_prints_sbatch_lines_with_the_specs_resources(root, tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(f"""
[dataset]
name = "{PYDOCS}"
text_field = "text"
[sampling]
n = 20
[run]
array = 4
[slurm]
partition = "gpu"
time = "2:00:00"
gpus_per_task = 1
cpus_per_task = 8
mem = "32G"
constraint = "a100"
array_parallelism = 2
[slurm.reduce]
mem = "2G"
""")
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}"}  # a controller that cannot be asked
    (tmp_path / "scontrol").write_text("#!/bin/sh\necho 'unable to contact' >&2; exit 1\n")
    (tmp_path / "scontrol").chmod(0o755)
    out = chatspace("plan", "embed", str(spec), "--json", root=root, env=env)
    assert out.returncode == 0, out.stderr
    planned = json.loads(out.stdout)
    run_dir, lines = planned["run_dir"], planned["sbatch"]
    assert Path(run_dir, "plan.json").exists()
    assert lines[0].startswith("# SLURM cannot be asked (`scontrol show` failed: unable to "
                               "contact): arrays split at SLURM's default MaxArraySize of 1001")
    task, reduce = lines[2], lines[3]
    assert task.startswith("a0=$(sbatch --parsable --array=0-3%2 ")
    for flag in ("--partition=gpu", "--time=120", "--gpus-per-task=1", "--cpus-per-task=8",
                 "--mem=32G", "--constraint=a100", "--requeue", "--open-mode=append",
                 f"--output={run_dir}/logs/task-%A_%a.out",
                 f"--error={run_dir}/logs/task-%A_%a.err"):
        assert f" {flag} " in task, flag
    assert task.endswith(f" hpc/task.sbatch {run_dir} 0)")
    assert reduce.startswith("sbatch --parsable --dependency=afterok:$a0 ")
    assert " --mem=2G " in reduce and " --time=30 " in reduce and "gpu" not in reduce
    assert reduce.endswith(f" hpc/reduce.sbatch {run_dir}")
    assert out.stderr.count("\n") == 1  # only the plan's log line


def sbatch(*args: str, env: dict | None = None) -> str:
    return subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True,
                          check=True, cwd=REPO, env=env, timeout=60).stdout.strip()


@pytest.mark.slurm
def test_templates_on_the_cluster_match_the_submitit_path(slurm_cluster, root, apptainer_shim,
                                                          tmp_path):
    image = tmp_path / "chatspace.sif"
    image.write_bytes(b"stand-in image: apptainer is recorded, not run")
    common = ["--dataset", str(PYDOCS), "--text-field", "text", "--n", "30", "--seed", "2",
              "--array", "2"]
    planned = chatspace("plan", "embed", *common, "--json", "--run-id", "by-template",
                        root=root)
    run = open_run(json.loads(planned.stdout)["run_dir"])
    env = {**os.environ, "CHATSPACE_IMAGE": str(image), "CHATSPACE_ROOT": str(root)}
    job = sbatch("--array=0-1", "hpc/task.sbatch", str(run.dir), env=env)
    sbatch(f"--dependency=afterok:{job}", "hpc/reduce.sbatch", str(run.dir), env=env)
    wait_until(lambda: run.manifest_path.exists(), timeout=300, what="the template run")
    calls = apptainer_shim.read_text().splitlines()
    hf_home = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
    prefix = f"apptainer exec --nv --bind {root} --bind {hf_home} {image} chatspace run "
    assert sorted(calls) == sorted([f"{prefix}task {run.dir} --task 0",
                                    f"{prefix}task {run.dir} --task 1",
                                    f"{prefix}reduce {run.dir}"])
    assert (REPO / "logs" / f"chatspace-task-{job}_0.out").exists()

    via_submitit = chatspace("submit", "embed", *common, "--executor", "slurm", "--wait",
                             "--json", "--container", str(image), root=root)
    assert via_submitit.returncode == 0, via_submitit.stderr
    other = open_run(json.loads(via_submitit.stdout)["run_dir"])
    drop = ["run_id", "created_at"]
    assert read_run(run).drop(drop).equals(read_run(other).drop(drop))
    assert any("python -u -m submitit.core._submit" in c
               for c in apptainer_shim.read_text().splitlines()[3:])

    # the same planned run executed by submitit: byte-identical shards
    shas = [sha256_file(shard(run, t)) for t in range(2)]
    for t in range(2):
        run.completion_path(t).unlink()
        shard(run, t).unlink()
    resumed = chatspace("resume", str(run.dir), "--executor", "slurm", "--wait", root=root)
    assert resumed.returncode == 0, resumed.stderr
    assert [sha256_file(shard(run, t)) for t in range(2)] == shas
    assert read_json(run.manifest_path)["rows_total"] == 30


@pytest.mark.skipif(shutil.which("apptainer") is None or not os.environ.get("CHATSPACE_IMAGE"),
                    reason="needs a real `apptainer` on PATH and CHATSPACE_IMAGE set to a built "
                           "image; Apptainer is not packaged for Debian bookworm, so it cannot "
                           "run on this machine")
def test_real_container_embeds(root):
    result = subprocess.run(
        ["apptainer", "exec", "--bind", str(root.parent), os.environ["CHATSPACE_IMAGE"],
         "chatspace", "submit", "embed", "--dataset", str(PYDOCS), "--text-field", "text",
         "--n", "10", "--executor", "local", "--root", str(root), "--json"],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    assert Path(json.loads(result.stdout)["manifest"]).exists()

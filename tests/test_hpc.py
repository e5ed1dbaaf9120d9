"""hpc/ sbatch templates and the sbatch lines `plan` prints, the container wrapper's command
line (checked here with a recording stand-in for `apptainer`; tests/test_container.py runs the
real one), and a static check of Apptainer.def."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from chatspace.kinds import KINDS
from chatspace.runs.commands import reduce_command, task_command
from chatspace.runs.record import Run
from tests.helpers import PYDOCS, REPO, chatspace

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
    assert "chatspace.steering.vllm_worker, chatspace.kinds.steer.kind" in sections["test"]
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
    run = Run(Path("/r"), "x", KINDS["embed"])
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
    image = tmp_path / "chatspace.sif"
    image.write_bytes(b"stand-in")
    env = {**os.environ, "CHATSPACE_IMAGE": str(image), "CHATSPACE_ROOT": "/ws",
           "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([str(REPO / "containers" / "run.sh"), "echo", "inside"], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout == "inside\n"
    line = f"apptainer exec --nv --bind /ws --bind {tmp_path / 'hf'} {image} echo inside"
    assert apptainer_shim.read_text() == line + "\n"
    assert out.stderr == f"chatspace: {line}\n"  # the task log shows it
    env["CHATSPACE_IMAGE"] = str(tmp_path / "typo.sif")
    missing = subprocess.run([str(REPO / "containers" / "run.sh"), "true"], env=env,
                             capture_output=True, text=True)
    assert missing.returncode == 2
    assert missing.stderr == f"chatspace: image not found: {tmp_path / 'typo.sif'}\n"
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

"""Shared fixtures: real data files, the real bundled model, and a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYDOCS = REPO / "jobs" / "data" / "pydocs.jsonl"

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def chatspace(*args: str, root: Path | None = None, env: dict | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (exit codes and output as a user sees them)."""
    cmd = [sys.executable, "-m", "chatspace", *args]
    if root is not None:
        cmd += ["--root", str(root)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})})


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


SLURM_MAX_ARRAY_SIZE = 5


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """Start (or reuse) the dev cluster with a small MaxArraySize and export SLURM_CONF; skip,
    saying why, if it cannot start."""
    env = {**os.environ, "CHATSPACE_SLURM_MAX_ARRAY_SIZE": str(SLURM_MAX_ARRAY_SIZE)}
    try:
        out = subprocess.run([str(REPO / "hpc" / "dev-cluster.sh"), "start"], env=env,
                             capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"the dev SLURM cluster could not start: {exc}")
    if out.returncode != 0:
        pytest.skip(f"the dev SLURM cluster could not start: {out.stderr.strip()[-500:]}")
    conf = out.stdout.strip().splitlines()[-1].split("=", 1)[1]
    os.environ["SLURM_CONF"] = conf
    return conf


def wait_until(predicate, timeout: float = 300, poll: float = 0.5, what: str = ""):
    """Poll `predicate` until it returns something truthy (returned), or fail."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "ws"


@pytest.fixture(scope="session")
def st_model():
    from sentence_transformers import SentenceTransformer

    from chatspace.jobs.embed.st_model import resolve_model

    return SentenceTransformer(resolve_model(None).path, device="cpu")


@pytest.fixture
def small_jsonl(tmp_path: Path) -> Path:
    """120 real passages plus rows that must be skipped (empty, whitespace, null, number)."""
    rows = [json.loads(line) for line in PYDOCS.read_text().splitlines()[:120]]
    rows[5]["text"] = ""
    rows[17]["text"] = "   \n "
    rows[33]["text"] = None
    rows[48]["text"] = 42
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def real_image() -> Path:
    """A real Apptainer (containers/dev-apptainer.sh) on PATH and the test image built from this
    checkout (containers/dev-image.sh, cached by the lock file); skip, saying why, where they
    cannot be set up."""
    def step(*cmd: str, timeout: float) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"{Path(cmd[0]).name} failed: {exc}")
        if out.returncode != 0:
            pytest.skip(f"{Path(cmd[0]).name} failed: {out.stderr.strip()[-500:]}")
        return out.stdout.strip().splitlines()[-1]

    apptainer = step(str(REPO / "containers" / "dev-apptainer.sh"), timeout=600)
    os.environ["PATH"] = f"{Path(apptainer).parent}:{os.environ['PATH']}"  # jobs inherit it
    return Path(step(str(REPO / "containers" / "dev-image.sh"), timeout=1800))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """`tiny_model_dir(shape)`: a tiny random-weight Qwen2/Qwen3/Llama model directory with a
    trained tokenizer (tests/tiny_models.py), built once per test run and shape."""
    from tests.tiny_models import build_model

    built: dict[str, Path] = {}

    def get(shape: str) -> Path:
        if shape not in built:
            built[shape] = build_model(tmp_path_factory.mktemp(f"tiny-{shape}"), shape)
        return built[shape]
    return get

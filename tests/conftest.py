"""Shared fixtures: real data files, the real bundled model, and a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "ws"


@pytest.fixture(scope="session")
def st_model():
    from sentence_transformers import SentenceTransformer

    from chatspace.model import resolve_model

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

"""Printing command results: aligned lines for people, one JSON object with --json."""

from __future__ import annotations

import json
from typing import Any

import click

from chatspace.runs.record import Run
from chatspace.text import printable


def emit(as_json: bool, data: dict[str, Any], lines: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        for line in lines:
            click.echo(printable(line))


def run_summary(run: Run) -> dict[str, Any]:
    manifest = run.manifest_path
    return {"run_id": run.run_id, "kind": run.kind.name, "run_dir": str(run.dir),
            "manifest": str(manifest) if manifest.exists() else None}

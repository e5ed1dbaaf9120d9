"""The serve kind: one task hosts a steered model behind vLLM's OpenAI-compatible server
(`chatspace serve`'s server) until its time limit, `chatspace cancel` or Ctrl-C. The plan
resolves the model and the default steering (saved in the run, so every attempt serves the
same spec); the task serves on a free port, records its endpoint once the server answers
(`endpoint`), and its one part is the session it served (``sessions-00000.parquet``)."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from chatspace.errors import BadInput
from chatspace.kinds.serve.spec import ServeSpec
from chatspace.runs.formats import Completion, Endpoint, Plan
from chatspace.runs.kind import Kind, Part, PartOutput, StatusNote, Summary, TaskCheck, WorkPlan
from chatspace.runs.record import Run, write_record
from chatspace.runs.timing import StageTimer

log = logging.getLogger(__name__)

DEFAULT_SPEC = "default-steering.safetensors"  # in the run directory, when there is one
SESSIONS = pa.schema([("run_id", pa.string()), ("url", pa.string()), ("node", pa.string()),
                      ("port", pa.int32()), ("started_at", pa.string()),
                      ("ended_at", pa.string()), ("stopped_by", pa.string()),
                      ("exit_code", pa.int32())])


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class ServeKind(Kind):
    """Serve MODEL (a local directory, a model recorded with download-model, or a cached name)
    with vLLM's OpenAI-compatible server and chatspace's steering, as one task that runs until
    its time limit (--time) or `chatspace cancel RUN`. `chatspace status RUN` says `serving at
    http://NODE:PORT/v1` once it answers; `chatspace endpoint RUN` prints the OPENAI_BASE_URL
    and OPENAI_API_KEY lines for a client (the key is a random per-run secret in a 0600 file
    in the run directory). The first argument is a spec file (.toml) or the model."""

    name = "serve"
    spec_type = ServeSpec
    argument = ("model", "name")

    def plan(self, spec: ServeSpec, root: Path, run_id: str) -> WorkPlan:
        from chatspace.models import find_model, model_shape

        model = find_model(spec.model.name, root)
        shape = model_shape(model.path, spec.model.name)
        files = {}
        if spec.steering.spec or spec.steering.vector:
            files[DEFAULT_SPEC] = self._default_spec(spec, shape, root)
        out = root / "serve" / model.label / (spec.run.name or "serve") / run_id
        details = {"model": {"label": model.label, "path": model.path,
                             "hidden_size": shape.hidden_size, "num_layers": shape.num_layers},
                   "default_steering": DEFAULT_SPEC if files else None}
        return WorkPlan(rows=1, details=details, output_dir=out,
                        manifest_path=out / "manifest.json",
                        outputs={"sessions": "sessions-{task:05d}.parquet"}, files=files)

    @staticmethod
    def _default_spec(spec: ServeSpec, shape: Any, root: Path) -> bytes:
        from chatspace.kinds.vector_refs import default_steering

        given = spec.steering
        flag = "steering.spec (--steer)" if given.spec else "steering.vector (--vector)"
        try:
            steering, _ = default_steering(given.spec or given.vector, given.layer,
                                           given.scale, given.op, shape.hidden_size,
                                           shape.num_layers, given.vector_key, root)
        except Exception as exc:  # any file that does not load is bad input
            raise BadInput(f"{flag}: {exc}") from None
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / DEFAULT_SPEC
            steering.save(str(path))
            return path.read_bytes()

    def run_parts(self, run: Run, task: int, parts: list[Part],
                  timer: StageTimer) -> Iterator[PartOutput]:
        from chatspace.kinds.serve.endpoint import endpoint_path, ensure_key
        from chatspace.kinds.serve.server import (
            free_port,
            public_host,
            serve_until_stopped,
            server_command,
            server_env,
        )

        spec: ServeSpec = run.spec
        details = run.plan.details
        host = spec.server.host
        port = spec.server.port or free_port(host)
        url = f"http://{public_host(host)}:{port}/v1"
        command, env = server_command(details["model"]["path"], host, port,
                                      spec.model.compile, spec.model.tensor_parallel_size,
                                      spec.model.max_model_len, spec.model.dtype)
        default = str(run.dir / DEFAULT_SPEC) if details["default_steering"] else None
        env = server_env(env, details["model"]["path"], run.root, default, ensure_key(run))
        started: list[Endpoint] = []

        def ready(pid: int) -> None:
            started.append(Endpoint(url=url, node=socket.gethostname(), port=port, pid=pid,
                                    task_pid=os.getpid(), started_at=_now()))
            write_record(endpoint_path(run), started[0])
            log.info("serving at %s (chatspace endpoint %s)", url, run.run_id)

        with timer.measure("serve"):
            session = serve_until_stopped(command, env, url.removesuffix("/v1"), ready)
        ended = _now()
        if started:
            write_record(endpoint_path(run), dataclasses.replace(
                started[0], ended_at=ended, stopped_by=session.stopped_by))
        row = {"run_id": run.run_id, "url": url, "node": socket.gethostname(), "port": port,
               "started_at": started[0].started_at if started else None, "ended_at": ended,
               "stopped_by": session.stopped_by, "exit_code": session.exit_code}
        yield PartOutput(parts[0], {"sessions": pa.Table.from_pylist([row], SESSIONS)},
                         {"served": bool(started)})

    def check_task(self, run: Run, task: int, record: Completion) -> TaskCheck:
        table = pq.read_table(run.output_paths(task)["sessions"])
        problems = [] if table.num_rows == 1 else \
            [f"sessions of task {task} has {table.num_rows} rows, not 1"]
        return TaskCheck(problems, pa.array([f"{run.run_id}:{task}"], pa.string()))

    def summarize(self, run: Run, records: list[Completion]) -> Summary:
        session = pq.read_table(run.output_paths(0)["sessions"]).to_pylist()[0]
        return Summary({"model": run.plan.details["model"]["label"],
                        "default_steering": run.plan.details["default_steering"],
                        **{k: session[k] for k in ("url", "started_at", "ended_at",
                                                   "stopped_by")}})

    def run_facts(self, plan: Plan, records: list[Completion]) -> dict[str, Any]:
        return {"model": plan.details["model"]["label"], "backend": "vllm"}

    def status_note(self, run: Run, task_states: list[str]) -> StatusNote:
        from chatspace.kinds.serve.endpoint import endpoint_state

        state = endpoint_state(run, task_states[0])
        endpoint = state.endpoint
        return StatusNote("endpoint", state.line(), {
            "state": state.state, **(endpoint.to_dict() if endpoint else {})})

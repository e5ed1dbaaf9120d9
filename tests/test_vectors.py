"""The vectors kind on real steer runs of a tiny model (HF backend) and their real capture
shards: means, contrasts and PCA equal numpy's on the same captures loaded whole, for any array
size; the closed loop recovers a planted direction and steering with it reproduces the
planted generations; a killed task resumes from its committed partials; bad input is one
line and writes nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from chatspace.errors import RunFailed
from chatspace.kinds import KINDS
from chatspace.kinds.steer.spec import SteerSpec
from chatspace.kinds.vectors import stats
from chatspace.kinds.vectors.stats import capture_means
from chatspace.runs.executors import DebugExecutor
from chatspace.runs.files import read_json
from chatspace.runs.plan import plan_run
from chatspace.runs.record import Run
from chatspace.specs import resolve_spec
from chatspace.steering import load_vector
from tests.helpers import REPO, chatspace, chatspace_here, files_under, wait_until
from tests.tiny_models import build_model

PROMPTS = ["How do lists work?", "Explain the module system.", "What is a decorator?",
           "Why use generators?"]
PERSONAS = [{"persona": p, "category": c} for p, c in
            (("pirate", "fiction"), ("engineer", "work"), ("chef", "work"))]


def steer_spec(model: Path, prompts: Path, tokens: int, generation: str = "",
               rest: str = "") -> str:
    """A steer spec on the HF backend: the model, the prompts file, `tokens` new tokens (and
    more [generation] keys), then `rest` (more tables)."""
    return (f'[model]\nname = "{model}"\nbackend = "hf"\ndtype = "float32"\n'
            f'[prompts]\nfile = "{prompts}"\n'
            f"[generation]\nmax_tokens = {tokens}\nthinking = false\n{generation}\n{rest}")


def steer(root: Path, spec: str, **sections) -> Run:
    """Plan and run a steer sweep in this process (debug executor)."""
    path = root.parent / f"{len(list(root.parent.glob('*.toml')))}.toml"
    path.write_text(spec)
    run = plan_run(KINDS["steer"], resolve_spec(SteerSpec, path, sections), root).run
    DebugExecutor().execute(run, range(run.num_tasks))
    return run


def submit_vectors(root: Path, *args: str) -> Run:
    out = chatspace("submit", "vectors", *args, "--executor", "debug", "--json", root=root)
    assert out.returncode == 0, out.stderr[-3000:]
    return Run.open(json.loads(out.stdout)["run_dir"], root, KINDS)


def reduced(run: Run, name: str) -> Path:
    manifest = read_json(run.manifest_path)
    return run.path(next(e["path"] for e in manifest["files"]
                         if e["task"] is None and e["path"].endswith("/" + name)))


@pytest.fixture(scope="module")
def personas_sweep(tmp_path_factory, tiny_model_dir) -> tuple[Path, Run]:
    """3 personas x 4 prompts x 2 reps, layers 1 and 3 captured (last row), 2 tasks."""
    where = tmp_path_factory.mktemp("vectors")
    (where / "prompts.json").write_text(json.dumps(PROMPTS))
    (where / "personas.json").write_text(json.dumps(PERSONAS))
    root = where / "ws"
    run = steer(root, steer_spec(tiny_model_dir("qwen2"), where / "prompts.json", 3,
                                 "n_reps = 2\ntemperature = 0.8", f"""
[personas]
file = "{where / 'personas.json'}"
[capture]
layers = [1, 3]
rows = "last"
[run]
array = 2
part_rows = 5
"""))
    return root, run


def captures(run: Run, layer: int) -> dict[str, tuple[str, np.ndarray]]:
    """Every generation's persona and capture at `layer`, by id, loaded whole."""
    out: dict[str, tuple[str, np.ndarray]] = {}
    for task in range(run.num_tasks):
        paths = run.output_paths(task)
        persona = {r["id"]: r["persona"] for r in pq.read_table(
            paths["results"], columns=["id", "persona"]).to_pylist()}
        folder = paths["capture_index"].parent
        for entry in pq.read_table(paths["capture_index"]).to_pylist():
            if entry["layer"] == layer:
                tensor = load_file(folder / entry["file"])[entry["key"]].double().numpy()
                out[entry["id"]] = persona[entry["id"]], tensor.reshape(-1)
    return out


def numpy_vectors(run: Run, layer: int) -> dict[str, np.ndarray]:
    """Every generation's capture at `layer`, grouped by persona."""
    groups: dict[str, list[np.ndarray]] = {}
    for persona, vector in captures(run, layer).values():
        groups.setdefault(persona, []).append(vector)
    return {g: np.stack(v) for g, v in groups.items()}


def test_means_contrasts_and_pca_equal_numpy_for_any_array_size(personas_sweep):
    root, sweep = personas_sweep
    args = ["--from", str(sweep.dir), "--group-by", "persona", "--contrast", "pirate:engineer",
            "--baseline", "chef", "--pca", "2"]
    one, four = submit_vectors(root, *args, "--array", "1"), \
        submit_vectors(root, *args, "--array", "4", "--part-rows", "3")
    assert chatspace("verify", str(four.dir)).returncode == 0
    got = load_file(reduced(one, "vectors.safetensors"))
    got4 = load_file(reduced(four, "vectors.safetensors"))
    assert got.keys() == got4.keys()
    for key in got:  # merging partials is order-independent up to float64 rounding
        np.testing.assert_allclose(got[key].numpy(), got4[key].numpy(), rtol=1e-6, atol=1e-7)
    rows = {r["key"]: r for r in pq.read_table(reduced(one, "vectors.parquet")).to_pylist()}
    for layer in (1, 3):
        captured = numpy_vectors(sweep, layer)
        means = {g: v.mean(axis=0) for g, v in captured.items()}
        for group, mean in means.items():
            np.testing.assert_allclose(got[f"mean/{group}/L{layer}"].double().numpy(), mean,
                                       rtol=1e-6, atol=1e-6)
        for a, b in (("pirate", "engineer"), ("pirate", "chef"), ("engineer", "chef")):
            np.testing.assert_allclose(got[f"contrast/{a}-{b}/L{layer}"].double().numpy(),
                                       means[a] - means[b], rtol=1e-6, atol=1e-6)
        names = sorted(means)
        centred = np.stack([means[g] for g in names])
        centred -= centred.mean(axis=0)
        _, singular, components = np.linalg.svd(centred, full_matrices=False)
        for k in range(2):
            mine = got[f"pc{k + 1}/L{layer}"].double().numpy()
            assert abs(abs(mine @ components[k]) - 1) < 1e-6, "equal up to sign"
            ratio = singular[k] ** 2 / (singular ** 2).sum()
            assert rows[f"pc{k + 1}/L{layer}"]["explained_variance"] == pytest.approx(ratio,
                                                                                     abs=1e-6)
        assert rows[f"contrast/pirate-engineer/L{layer}"]["counts"] == [8, 8]
    projections = pq.read_table(reduced(one, "projections.parquet"))
    assert projections.num_rows == 24 * len(got)  # 24 generations x 2 layers x 8 vectors each
    by_id = captures(sweep, 3)
    for row in projections.to_pylist():  # each the capture on the vector's unit direction
        if row["layer"] == 3:
            unit = got[row["key"]].double().numpy()
            persona, vector = by_id[row["id"]]
            assert row["group"] == persona
            assert row["projection"] == pytest.approx(vector @ unit / np.linalg.norm(unit),
                                                      rel=1e-6, abs=1e-6)
    ids = projections.column("id").to_pylist()  # a generation's rows together
    runs_of_ids = [i for n, i in enumerate(ids) if n == 0 or ids[n - 1] != i]
    assert len(runs_of_ids) == len(set(ids)) == 24
    listed = chatspace("query", "SELECT count(*) AS n FROM vectors WHERE kind = 'pc'", "--json",
                       root=root)
    assert listed.returncode == 0 and json.loads(listed.stdout) == [{"n": 8}]  # 2 runs x 2 x 2
    report = chatspace("report", str(one.dir), "-o", str(root / "v.html"))
    assert report.returncode == 0, report.stderr
    page = (root / "v.html").read_text()
    assert "groups on PC1/PC2 · layer 3" in page and "projection on contrast/" in page


def test_the_closed_loop_recovers_a_planted_direction(tmp_path, tiny_model_dir):
    root, model = tmp_path / "ws", tiny_model_dir("qwen2")
    (tmp_path / "prompts.json").write_text(json.dumps(PROMPTS))
    unit = torch.randn(64, generator=torch.Generator().manual_seed(7))
    unit = unit / unit.norm()
    np.save(tmp_path / "planted.npy", unit.numpy())
    scale = 3.0
    head = steer_spec(model, tmp_path / "prompts.json", 8)
    planted = steer(root, head + f"""
[[steering]]
name = "baseline"
[[steering]]
name = "plant"
op = "add"
layers = [2]
vector = "{tmp_path / 'planted.npy'}"
scales = [{scale}]
[capture]
layers = [2]
rows = "prompt"
pool = "mean"
""")
    vectors = submit_vectors(root, "--from", planted.run_id, "--group-by", "point",
                             "--contrast", "plant/L2/x3:baseline")
    key = "contrast/plant%2FL2%2Fx3-baseline/L2"  # a group name escaped in its key
    recovered = load_vector(reduced(vectors, "vectors.safetensors"), key)
    cosine = torch.nn.functional.cosine_similarity(recovered, unit * scale, dim=0)
    assert cosine >= 0.9999 and abs(recovered.norm() / scale - 1) < 1e-3
    again = steer(root, head + f"""
[[steering]]
name = "recovered"
op = "add"
layers = [2]
vector = "{vectors.run_id}"
vector_key = "{key}"
scales = [1.0]
""")
    tokens = {}
    for run, point in ((planted, "plant/L2/x3"), (again, "recovered/L2/x1")):
        table = pq.read_table(run.output_paths(0)["results"]).to_pylist()
        tokens[point] = [r["output_token_ids"] for r in table if r["point"] == point]
    assert tokens["recovered/L2/x1"] == tokens["plant/L2/x3"]
    # chat takes the same: --vector RUN --vector-key KEY, and /steer RUN KEY
    chat = subprocess.run([sys.executable, "-m", "chatspace", "chat", str(model), "--root",
                           str(root), "--vector", vectors.run_id, "--vector-key", key,
                           "--max-tokens", "2", "--no-thinking"],
                          input=f"/steer\n/steer off\n/steer {vectors.run_id} {key}\nHi\n",
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert chat.stdout.count(f"[{key}] (add at layer 2)") == 2 and "steering off" in chat.stdout


def test_a_killed_task_resumes_from_its_committed_partials(tmp_path, tiny_model_dir):
    root = tmp_path / "ws"
    (tmp_path / "prompts.json").write_text(json.dumps([f"Prompt number {i}?" for i in
                                                       range(50)]))
    (tmp_path / "personas.json").write_text(json.dumps(PERSONAS + [{"persona": "poet"}]))
    sweep = steer(root, steer_spec(tiny_model_dir("qwen2"), tmp_path / "prompts.json", 1,
                                   rest=f"""
[personas]
file = "{tmp_path / 'personas.json'}"
[capture]
layers = [0, 1, 2, 3]
rows = "all"
[run]
part_rows = 64
"""))
    args = ["--from", sweep.run_id, "--baseline", "poet", "--pca", "3", "--part-rows", "1"]
    whole = submit_vectors(root, *args, "--run-id", "whole")
    planned = chatspace("plan", "vectors", *args, "--run-id", "killed", root=root)
    assert planned.returncode == 0, planned.stderr
    run = Run.open("killed", root, KINDS)
    task = subprocess.Popen([sys.executable, "-m", "chatspace", "run", "task", str(run.dir),
                             "--task", "0"], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: len(list(run.parts_dir(0).glob("part-*.json"))) >= 3, poll=0.01,
               what="three committed parts")
    os.killpg(task.pid, signal.SIGKILL)
    assert task.wait() == -signal.SIGKILL
    committed = len(list(run.parts_dir(0).glob("part-*.json")))
    assert run.completion(0) is None and committed < 200, "the kill landed mid-stream"
    again = chatspace("run", "task", str(run.dir), "--task", "0")
    assert again.returncode == 0 and f"resuming, {committed} of 200 parts" in again.stderr
    assert chatspace("run", "reduce", str(run.dir)).returncode == 0
    mine, theirs = (load_file(reduced(r, "vectors.safetensors")) for r in (run, whole))
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_a_damaged_capture_file_fails_its_task_in_one_line(tmp_path, tiny_model_dir,
                                                           monkeypatch):
    """A capture file cut short after the plan (an interrupted copy, a full disk) fails the task
    with one line naming it, after the parts before it are committed (a new plan refuses the
    run: its outputs no longer have their recorded sizes); the reader thread that ran ahead of
    the sums is gone, whether the stream fails or its consumer closes it early."""
    root = tmp_path / "ws"
    (tmp_path / "prompts.json").write_text(json.dumps(PROMPTS))
    (tmp_path / "personas.json").write_text(json.dumps(PERSONAS))
    sweep = steer(root, steer_spec(tiny_model_dir("qwen2"), tmp_path / "prompts.json", 1,
                                   rest=f"""
[personas]
file = "{tmp_path / 'personas.json'}"
[capture]
layers = [1, 2]
rows = "all"
[run]
part_rows = 4
"""))
    files = sorted(sweep.output_dir.glob("captures-*/part-*.safetensors"))
    assert len(files) == 3  # 12 generations, 4 to a part
    def readers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "capture-reader"]

    monkeypatch.setattr(stats, "READ_BYTES", 1024)  # a few rows a read: the reader must wait
    hidden = sweep.plan.details["model"]["hidden_size"]
    means = capture_means(files, hidden)
    assert len(next(means)) == 8  # 4 generations x 2 layers
    assert readers(), "the reader waits for a buffer, ahead of the sums"
    means.close()
    assert readers() == []
    planned = chatspace("plan", "vectors", "--from", sweep.run_id, "--part-rows", "4",
                        "--run-id", "cut", root=root)
    assert planned.returncode == 0, planned.stderr
    files[-1].write_bytes(files[-1].read_bytes()[:-100])  # cut short after the plan
    with pytest.raises(RunFailed, match="ends before its rows do"):
        list(capture_means(files, hidden))
    assert readers() == []
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes((1 << 60).to_bytes(8, "little") + b"{}")
    with pytest.raises(RunFailed, match="is not a safetensors file"):
        list(capture_means([garbage], hidden))
    refused = chatspace("plan", "vectors", "--from", sweep.run_id, root=root)  # a new plan
    assert refused.returncode == 2 and "is not finished" in refused.stderr.splitlines()[-1]
    run = Run.open("cut", root, KINDS)
    result = chatspace("run", "task", str(run.dir), "--task", "0")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if "ends before its rows do" in line]
    assert len(lines) == 1 and str(files[-1]) in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert len(list(run.parts_dir(0).glob("part-*.json"))) == 2 and run.completion(0) is None


def test_bad_input_is_one_line_and_writes_nothing(personas_sweep, tmp_path, tiny_model_dir):
    root, sweep = personas_sweep
    (tmp_path / "p.json").write_text(json.dumps(PROMPTS[:1]))
    bare = steer(root, steer_spec(tiny_model_dir("qwen2"), tmp_path / "p.json", 2))
    small = steer(root, steer_spec(build_model(tmp_path / "small", "qwen2", hidden=32),
                                   tmp_path / "p.json", 2, rest="[capture]\nlayers = [1]\n"))
    before = files_under(root)
    for args, expected in (
            (["--from", bare.run_id], f"steer run {bare.run_id} has no captures"),
            (["--from", sweep.run_id, "--from", small.run_id],
             "the runs are of different models or hidden sizes"),
            (["--from", sweep.run_id, "--group-by", "colour"],
             "groups.by (--group-by) 'colour' is not a results column"),
            (["--from", sweep.run_id, "--contrast", "pirate:wizard"],
             "groups: no group 'wizard' in column 'persona'"),
            (["--from", sweep.run_id, "--contrast", "pirate"], "must look like A:B"),
            (["--from", sweep.run_id, "--layers", "2"], "layer(s) [2] not captured"),
            (["--from", "nope"], "no planned run 'nope'"),
            ([], "source.runs is required")):
        result = chatspace_here("submit", "vectors", *args, "--executor", "debug",
                                root=root)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (args, result.stderr[-2000:])
    assert files_under(root) == before

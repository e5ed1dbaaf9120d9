"""The Assistant Axis pipeline as the README walks it: the specs of `jobs/assistant-axis/`,
run stage by stage with one command each (`submit … --executor debug`) on a tiny model (the
HF backend; the specs' model, layer range and lengths swapped for the tiny model's) with the
judge stand-in, each stage's outputs checked against numpy on the captures: the role vectors
and their principal components, the axis, its percentiles (the same for --array 1 and 4),
the capped sweep's thresholds, and its probes (never below the threshold where it capped)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from chatspace.kinds import KINDS
from chatspace.runs.record import Run
from tests.helpers import REPO, chatspace_here
from tests.openai_server import FakeOpenAI
from tests.test_vectors import captures, reduced

JOBS = REPO / "jobs" / "assistant-axis"
LAYERS = [1, 2, 3]


def tiny_spec(name: str, model: Path, where: Path) -> Path:
    """A shipped spec with the tiny model, its layers (1-3 for 46-53), a few tokens, the HF
    backend."""
    text = (JOBS / name).read_text().replace('"Qwen/Qwen3-32B"', f'"{model}"')
    text = text.replace('"46-53"', '"1-3"').replace('"bfloat16"', '"float32"')
    text = text.replace('"vllm"', '"hf"').replace("max_tokens = 512", "max_tokens = 6")
    text = text.replace("max_model_len = 4096\n", "")
    (where / name).write_text(text)
    return where / name


def submit(root: Path, kind: str, *args: str) -> Run:
    out = chatspace_here("submit", kind, *args, "--executor", "debug", "--json", root=root)
    assert out.returncode == 0, out.stderr[-3000:]
    return Run.open(json.loads(out.stdout)["run_dir"], root, KINDS)


def table(run: Run, output: str) -> list[dict]:
    return pa.concat_tables(pq.read_table(run.output_paths(t)[output])
                            for t in range(run.num_tasks)).to_pylist()


def test_the_pipeline_runs_end_to_end_and_each_stage_agrees_with_numpy(tmp_path, monkeypatch,
                                                                       tiny_model_dir):
    from safetensors.torch import load_file

    root, model = tmp_path / "ws", tiny_model_dir("qwen2")
    roles = submit(root, "steer", str(tiny_spec("roles.toml", model, tmp_path)), "--array", "2")
    with FakeOpenAI() as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        # the shipped rate limits would make the stand-in's 144 answers take half a minute
        judge = submit(root, "judge", str(JOBS / "judge.toml"), "--execute",
                       "--requests-per-minute", "60000", "--tokens-per-minute", "100000000")
    results = {r["id"]: r for r in table(roles, "results")}
    scores = {j["id"]: j["score"] for j in table(judge, "judgments")}
    assert set(scores) == set(results)
    kept = {i for i, r in results.items() if r["persona"] == "assistant" or
            (scores[i] is not None and scores[i] >= 3)}

    role_vectors = submit(root, "vectors", str(JOBS / "role-vectors.toml"))
    got = load_file(reduced(role_vectors, "vectors.safetensors"))
    for layer in LAYERS:
        by_persona: dict[str, list] = {}
        for gid, (persona, vector) in captures(roles, layer).items():
            if gid in kept:
                by_persona.setdefault(persona, []).append(vector)
        means = {p: np.mean(v, axis=0) for p, v in by_persona.items() if len(v) >= 2}
        assert {k.split("/")[1] for k in got if k.startswith("mean/") and
                k.endswith(f"/L{layer}")} == set(means)
        for persona, mean in means.items():
            np.testing.assert_allclose(got[f"mean/{persona}/L{layer}"].double().numpy(), mean,
                                       rtol=1e-5, atol=1e-6)
        stacked = np.stack([means[p] for p in sorted(means)])
        component = np.linalg.svd(stacked - stacked.mean(0), full_matrices=False)[2][0]
        pc1 = got[f"pc1/L{layer}"].double().numpy()
        assert abs(abs(float(pc1 @ component)) - 1) < 1e-5

    axis = submit(root, "vectors", str(JOBS / "axis.toml"), "--array", "4")
    again = submit(root, "vectors", str(JOBS / "axis.toml"), "--array", "1", "--name", "axis-1")
    vectors = load_file(reduced(axis, "vectors.safetensors"))
    recorded = json.loads(reduced(axis, "percentiles.json").read_text())
    assert recorded == json.loads(reduced(again, "percentiles.json").read_text())
    thresholds = {}
    for layer in LAYERS:
        rows = {gid: (persona, v) for gid, (persona, v) in captures(roles, layer).items()
                if gid in kept}
        assistant = [v for p, v in rows.values() if p == "assistant"]
        others = [v for p, v in rows.values() if p != "assistant"]
        key = f"contrast/assistant-role/L{layer}"
        expected = np.mean(assistant, axis=0) - np.mean(others, axis=0)
        np.testing.assert_allclose(vectors[key].double().numpy(), expected, rtol=1e-5,
                                   atol=1e-6)
        unit = expected / np.linalg.norm(expected)
        projections = [float(v @ unit) for _, v in rows.values()]
        np.testing.assert_allclose([recorded[key][f"p{q}"] for q in (1, 5, 25, 50)],
                                   np.percentile(projections, [1, 5, 25, 50]), rtol=1e-5)
        thresholds[layer] = recorded[key]["p25"]

    capped = submit(root, "steer", str(tiny_spec("capped.toml", model, tmp_path)), "--array", "2")
    points = json.loads((capped.dir / "inputs.json").read_text())["points"]
    cap = next(p for p in points if p["op"] == "cap")
    assert cap["name"] == "axis-cap/L1-3" and cap["layers"] == LAYERS
    assert cap["min"] == [thresholds[layer] for layer in LAYERS] and cap["max"] is None
    from chatspace.kinds.steer.points import point_file
    from chatspace.steering.spec import SteeringSpec

    saved = SteeringSpec.load(capped.dir / point_file(points.index(cap)))
    assert sorted(saved.layers) == LAYERS  # the one point: the cap at every layer of the range
    for layer in LAYERS:
        (op,) = saved.layers[layer].ops
        assert op.op == "cap" and op.min == pytest.approx(thresholds[layer]) and op.max is None
        np.testing.assert_allclose(op.vector.numpy(),
                                   vectors[f"contrast/assistant-role/L{layer}"].numpy())
    probes = table(capped, "probes")
    generations = {r["id"]: r for r in table(capped, "results")}
    point_of = {i: r["point"] for i, r in generations.items()}
    assert len(probes) == len(point_of) * len(LAYERS)
    for row in probes:
        values = np.array(row["values"])
        assert row["probe"] == "axis" and row["layer"] in LAYERS
        assert row["last"] == pytest.approx(values[-1])
        prompt = generations[row["id"]]["prompt_tokens"]
        assert row["prompt_mean"] == pytest.approx(values[:prompt].mean(), rel=1e-6)
        response = values[prompt:]  # none when the first token ended the generation
        assert row["response_mean"] == (pytest.approx(response.mean(), rel=1e-6)
                                        if len(response) else None)
        if point_of[row["id"]] == cap["name"]:  # every capped row reads at least the threshold
            threshold = thresholds[row["layer"]]
            assert values.min() >= threshold - 1e-4 * max(1.0, abs(threshold))
    same_as_by_hand(model, saved, generations, probes, cap["name"])
    out = chatspace_here("query", "--json", "SELECT point, layer, count(*) AS n, avg(last) AS "
                         "last FROM steer_probes GROUP BY ALL ORDER BY ALL", root=root)
    assert out.returncode == 0, out.stderr
    assert [(r["point"], r["layer"], r["n"]) for r in json.loads(out.stdout)] == sorted(
        (p, layer, sum(v == p for v in point_of.values())) for p in set(point_of.values())
        for layer in LAYERS)
    report = tmp_path / "report.html"
    assert chatspace_here("report", capped.run_id, "-o", str(report), root=root).returncode == 0
    assert all(f"probe axis at layer {layer}" in report.read_text() for layer in LAYERS)
    baseline = [np.array(r["values"]) for r in probes if point_of[r["id"]] == "baseline"
                and r["layer"] == 1]
    assert min(v.min() for v in baseline) < thresholds[1]  # the cap had something to do


def same_as_by_hand(model: Path, saved, generations: dict, probes: list[dict], name: str) -> None:
    """A few of the sweep's capped generations equal `SteerModel` runs with a spec of every
    layer's cap and a probe of every layer's axis: the same tokens and probe values."""
    from chatspace.kinds.steer.rendering import row_ids
    from chatspace.steering import Probe, Sampling, SteerModel
    from chatspace.steering.spec import LayerSteeringSpec, SteeringSpec

    rows = [r for r in generations.values() if r["point"] == name][:4]
    spec = SteeringSpec({layer: LayerSteeringSpec(saved.layers[layer].ops) for layer in LAYERS})
    by_hand = [Probe(f"L{layer}", saved.layers[layer].ops[0].vector, (layer,))
               for layer in LAYERS]
    with SteerModel(str(model), "hf") as steer_model:
        prompts = [row_ids(steer_model.tokenizer, "chat", r["prompt"], r["system_prompt"], False,
                           r["persona"]) for r in rows]
        outs = steer_model.generate_sync(
            prompts, [Sampling(max_tokens=6, temperature=0.7, seed=r["seed"]) for r in rows],
            steering_spec=spec, probes=by_hand)
    swept = {(p["id"], p["layer"]): p["values"] for p in probes}
    for row, out in zip(rows, outs, strict=True):
        assert out.token_ids == row["output_token_ids"]
        for layer in LAYERS:
            np.testing.assert_allclose(out.probes[f"L{layer}"][layer], swept[(row["id"], layer)],
                                       rtol=1e-5, atol=1e-5)

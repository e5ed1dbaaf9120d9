"""The request fields of `chatspace serve`, checked without a server: every malformed field is
a `FieldError` naming it in one line, a good one becomes the spec, capture and metrics the
middleware hands the worker, and a vector reference never names a file."""

from __future__ import annotations

import pytest
import torch

from chatspace.serve.fields import DEFAULT, Extras, FieldError, Shape
from chatspace.steering.spec import AblationSpec, AddSpec, ProjectionCapSpec

SHAPE = Shape(hidden_size=8, num_layers=4)
REGISTERED = {"persona": torch.ones(8)}


def lookup(name: str, key: str | None) -> torch.Tensor:
    if name not in REGISTERED:
        raise ValueError(f"{name!r} is not a registered vector")
    return REGISTERED[name]


def parse(body: dict) -> Extras:
    return Extras.parse(dict(body), SHAPE, lookup)


def test_points_become_one_spec_over_their_layers():
    extras = parse({"steering": [
        {"op": "add", "layers": [1, 2], "vector": "persona", "scale": 2},
        {"op": "cap", "layers": [2], "vector": [1.0] * 8, "max": 0.5},
        {"op": "ablate", "layers": [3], "vector": [0.5] * 8}]})
    spec = extras.steering
    assert sorted(spec.layers) == [1, 2, 3]
    assert [type(op) for op in spec.layers[2].ops] == [AddSpec, ProjectionCapSpec]
    assert spec.layers[1].ops[0].scale == 2.0 and spec.layers[2].ops[1].max == 0.5
    assert isinstance(spec.layers[3].ops[0], AblationSpec)
    assert not extras.collects


def test_absent_null_and_empty_steering():
    assert parse({}).steering is DEFAULT  # the server's default applies
    assert parse({"steering": None}).steering is None  # unsteered, default or not
    assert parse({"steering": []}).steering is None


def test_capture_and_metrics():
    extras = parse({"capture": {"layers": [0, 3], "rows": "all", "pool": "mean"},
                    "chatspace_metrics": {"top_k": 3}})
    assert extras.capture_layers == (0, 3) and extras.capture.rows == "all"
    assert extras.capture.pool == "mean" and extras.metrics_k == 3 and extras.collects
    assert parse({"capture": {"layers": [1]}}).capture.rows == "last"  # a steer spec's default
    assert parse({"chatspace_metrics": True}).metrics_k == 5


BAD = [
    ({"steering": {"op": "add"}}, "steering: must be a list of points"),
    ({"steering": ["add"]}, "steering[0]: must be an object"),
    ({"steering": [{"op": "add", "layers": [1], "vector": [1.0] * 8, "scales": [1]}]},
     "steering[0].scales: is not a field of a steering point"),
    ({"steering": [{"op": "push", "layers": [1], "vector": [1.0] * 8}]},
     "steering[0].op: 'push' is not one of add, cap, ablate"),
    ({"steering": [{"op": "add", "layers": [], "vector": [1.0] * 8}]},
     "steering[0].layers: must be a non-empty list"),
    ({"steering": [{"op": "add", "layers": [4], "vector": [1.0] * 8}]},
     "steering[0].layers: layer 4 is out of range: the model has 4 layers (0..3)"),
    ({"steering": [{"op": "add", "layers": [1, 1], "vector": [1.0] * 8}]},
     "steering[0].layers: [1, 1] names a layer twice"),
    ({"steering": [{"op": "add", "layers": [1], "vector": [1.0] * 7}]},
     "steering: layers[1].ops[0].vector: has size 7, the model's hidden size is 8"),
    ({"steering": [{"op": "add", "layers": [1], "vector": [float("inf")] * 8}]},
     "steering: layers[1].ops[0].vector: contains NaN or infinite values"),
    ({"steering": [{"op": "add", "layers": [1], "vector": [0.0] * 8}]},
     "steering: layers[1].ops[0].vector: is all zeros"),
    ({"steering": [{"op": "add", "layers": [1], "vector": "/etc/passwd"}]},
     "steering[0].vector: '/etc/passwd' is not a registered vector"),
    ({"steering": [{"op": "add", "layers": [1], "vector": [1.0] * 8, "vector_key": "k"}]},
     "steering[0].vector_key: an inline vector has no key"),
    ({"steering": [{"op": "add", "layers": [1], "vector": ["a"] * 8}]},
     "steering[0].vector: an inline vector is a non-empty list of numbers"),
    ({"steering": [{"op": "add", "layers": [1], "vector": [1.0] * 8, "scale": "2"}]},
     "steering[0].scale: must be a finite number"),
    ({"steering": [{"op": "cap", "layers": [1], "vector": [1.0] * 8, "scale": 2}]},
     "steering[0].scale: op cap takes min and max"),
    ({"steering": [{"op": "cap", "layers": [1], "vector": [1.0] * 8}]},
     "steering[0]: op cap needs min, max or both"),
    ({"steering": [{"op": "add", "layers": [1], "vector": [1.0] * 8, "max": 1}]},
     "steering[0].min: op add takes scale, not min/max"),
    ({"capture": [1]}, "capture: must be an object"),
    ({"capture": {"layers": [1], "rows": "some"}}, "capture: rows must be one of"),
    ({"capture": {"layers": [1], "rows": 3}}, "capture.rows: must be a string"),
    ({"capture": {"layers": [1], "dtype": "float7"}}, "capture: dtype 'float7' is not"),
    ({"chatspace_metrics": {"top_k": 0}}, "chatspace_metrics: must be true, false or"),
    ({"capture": {"layers": [1]}, "n": 2}, "n: capture and chatspace_metrics are per"),
    ({"chatspace_metrics": True, "stream": True}, "stream: capture and chatspace_metrics"),
]


@pytest.mark.parametrize(("body", "message"), BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_each_bad_field_is_one_line_naming_it(body, message):
    with pytest.raises(FieldError) as raised:
        parse(body)
    assert str(raised.value).startswith(message), str(raised.value)
    assert "\n" not in str(raised.value)
    assert message.startswith(raised.value.field)


def test_a_serve_run_plans_from_its_model_argument_and_refuses_bad_input(tiny_model_dir,
                                                                         tmp_path):
    """`plan serve MODEL` (no server): the default steering is resolved and saved in the run;
    bad input is exit 2, one line, and no run written."""
    import json

    import numpy

    from chatspace.steering.spec import SteeringSpec
    from tests.helpers import chatspace_here as chatspace
    from tests.helpers import files_under, vector

    model = tiny_model_dir("qwen2")
    root = tmp_path / "ws"
    numpy.save(tmp_path / "v.npy", vector(1).numpy())
    planned = chatspace("plan", "serve", str(model), "--vector", str(tmp_path / "v.npy"),
                        "--layer", "2", "--scale", "3", "--json", root=root)
    assert planned.returncode == 0, planned.stderr
    run_dir = json.loads(planned.stdout)["run_dir"]
    spec = SteeringSpec.load(f"{run_dir}/default-steering.safetensors")
    assert list(spec.layers) == [2] and spec.layers[2].ops[0].scale == 3.0
    status = json.loads(chatspace("status", run_dir, "--json").stdout)
    assert status["endpoint"]["state"] == "not started"
    ended = chatspace("endpoint", run_dir)
    assert ended.returncode == 1 and "is not serving: not started" in ended.stderr
    before = files_under(root)
    for args, message in [
            (["--array", "2"], "run.array (--array) must be 1 for serve"),
            (["--vector", str(tmp_path / "v.npy"), "--layer", "9"],
             "steering.vector (--vector): layers[9]"),
            (["--steer", "a", "--vector", "b"], "give steering.spec (--steer) or"),
            (["--port", "70000"], "server.port (--port) must be <= 65535"),
            (["--model", str(model)], "is not a spec file (.toml), and --model is given")]:
        refused = chatspace("plan", "serve", str(model), *args, root=root)
        assert refused.returncode == 2, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("chatspace: error: ") and \
            message in lines[0], lines
    assert files_under(root) == before

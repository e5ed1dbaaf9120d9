"""Steering specs: the maths of each operation, validation naming the field, the one-file
save/load, and vectors read from .npy/.pt/.safetensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from chatspace.steering import (
    AblationSpec,
    AddSpec,
    LayerSteeringSpec,
    ProjectionCapSpec,
    SteeringSpec,
    apply_ops,
    load_vector,
)

H = 8


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_each_operation_does_what_it_says_and_never_in_place():
    hidden, vector = rand(5, H), rand(H, seed=1)
    unit = vector / vector.norm()
    before = hidden.clone()
    added = apply_ops(hidden, (AddSpec(vector, 2.0),))
    torch.testing.assert_close(added, hidden + 2.0 * vector)
    capped = apply_ops(hidden, (ProjectionCapSpec(vector, min=-0.1, max=0.2),))
    torch.testing.assert_close(capped @ unit, (hidden @ unit).clamp(-0.1, 0.2))
    rest = capped - (capped @ unit).unsqueeze(-1) * unit  # the orthogonal part is untouched
    torch.testing.assert_close(rest, hidden - (hidden @ unit).unsqueeze(-1) * unit)
    open_top = apply_ops(hidden, (ProjectionCapSpec(vector, min=0.0),))
    assert bool(((open_top @ unit) >= -1e-6).all())
    removed = apply_ops(hidden, (AblationSpec(vector, 0.0),))
    assert float((removed @ unit).abs().max()) < 1e-5
    halved = apply_ops(hidden, (AblationSpec(vector, 0.5),))
    torch.testing.assert_close(halved @ unit, 0.5 * (hidden @ unit))
    assert torch.equal(hidden, before)  # inputs are never modified
    one_way = apply_ops(hidden, (AddSpec(vector, 1.0), AblationSpec(vector, 0.0)))
    other_way = apply_ops(hidden, (AblationSpec(vector, 0.0), AddSpec(vector, 1.0)))
    assert not torch.allclose(one_way, other_way)  # the ops are applied in order
    assert apply_ops(hidden.to(torch.bfloat16), (AddSpec(vector),)).dtype == torch.bfloat16


@pytest.mark.parametrize(("layers", "message"), [
    ({1: [AddSpec(torch.zeros(H))]}, "layers[1].ops[0].vector: is all zeros"),
    ({1: [AddSpec(torch.full((H,), float("nan")))]},
     "layers[1].ops[0].vector: contains NaN or infinite values"),
    ({0: [AddSpec(rand(H)), AddSpec(rand(H + 1))]},
     f"layers[0].ops[1].vector: has size {H + 1}, the model's hidden size is {H}"),
    ({4: [AddSpec(rand(H))]}, "layers[4]: layer index out of range (the model has 4 decoder"),
    ({-1: [AddSpec(rand(H))]}, "layers[-1]: layer index out of range"),
    ({2: [ProjectionCapSpec(rand(H), min=1.0, max=0.5)]}, "layers[2].ops[0]: min 1.0 > max 0.5"),
    ({2: [ProjectionCapSpec(rand(H))]}, "layers[2].ops[0]: give min, max or both"),
    ({3: [AddSpec(rand(H), float("inf"))]}, "layers[3].ops[0].scale: must be a finite number"),
])
def test_bad_specs_are_refused_naming_the_field(layers, message):
    spec = SteeringSpec({i: LayerSteeringSpec(tuple(ops)) for i, ops in layers.items()})
    with pytest.raises(ValueError) as caught:
        spec.check(hidden_size=H, num_layers=4)
    assert str(caught.value).startswith(message)


def test_a_spec_saves_to_one_file_and_loads_back(tmp_path):
    spec = SteeringSpec({
        1: LayerSteeringSpec((AddSpec(rand(H, seed=2), 3.0),
                              ProjectionCapSpec(rand(H, seed=3), max=0.5))),
        3: LayerSteeringSpec((AblationSpec(rand(H, seed=4), 0.0),)),
    })
    spec.check(H, 4)
    path = tmp_path / "spec.safetensors"
    spec.save(path)
    loaded = SteeringSpec.load(path)
    assert loaded.fingerprint() == spec.fingerprint()
    assert [op.op for op in loaded.layers[1].ops] == ["add", "cap"]
    assert (loaded.layers[1].ops[1].min, loaded.layers[1].ops[1].max) == (None, 0.5)
    hidden = rand(3, H, seed=5)
    torch.testing.assert_close(apply_ops(hidden, loaded.layers[1].ops),
                               apply_ops(hidden, spec.layers[1].ops))
    other = SteeringSpec({1: LayerSteeringSpec((AddSpec(rand(H, seed=2), 3.1),))})
    assert other.fingerprint() != spec.fingerprint()
    save_file({"x": rand(H)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not a chatspace steering spec"):
        SteeringSpec.load(tmp_path / "plain.safetensors")


def test_vectors_load_from_npy_pt_and_safetensors(tmp_path):
    vector = rand(H, seed=6)
    np.save(tmp_path / "v.npy", vector.numpy())
    torch.save(vector.unsqueeze(0), tmp_path / "v.pt")
    save_file({"persona": vector}, str(tmp_path / "v.safetensors"))
    save_file({"a": vector, "b": -vector}, str(tmp_path / "two.safetensors"))
    for name in ("v.npy", "v.pt", "v.safetensors"):
        torch.testing.assert_close(load_vector(tmp_path / name), vector)
    torch.testing.assert_close(load_vector(tmp_path / "two.safetensors", "b"), -vector)
    with pytest.raises(ValueError, match="holds 2 tensors"):
        load_vector(tmp_path / "two.safetensors")
    np.save(tmp_path / "m.npy", np.ones((2, H)))
    with pytest.raises(ValueError, match="expected one 1-D vector"):
        load_vector(tmp_path / "m.npy")
    with pytest.raises(ValueError, match="vector file not found"):
        load_vector(tmp_path / "nope.npy")


def test_the_names_users_need_come_from_one_place():
    import chatspace.steering as steering
    from chatspace.steering import CaptureOptions, Generation, Sampling, SteerModel
    from chatspace.steering.model import SteerModel as Model
    from chatspace.steering.outputs import CaptureOptions as Options
    from chatspace.steering.outputs import Generation as Output
    from chatspace.steering.outputs import Sampling as Sample

    assert (SteerModel, Sampling, CaptureOptions, Generation) == (Model, Sample, Options, Output)
    assert {"SteerModel", "Sampling", "CaptureOptions", "SteeringSpec"} <= set(steering.__all__)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        steering.Nope  # noqa: B018


def test_the_op_names_are_the_operations():
    """Specs and the CLI take the op names from `choices` (no torch): they name every op."""
    from chatspace.steering.choices import OP_NAMES
    from chatspace.steering.spec import OPS

    assert tuple(OPS) == OP_NAMES and all(OPS[name].op == name for name in OPS)


def test_what_client_and_worker_exchange_is_typed_on_both_sides():
    """The vLLM client and its worker extension exchange plain dicts (vLLM serialises them)
    built and read through `chatspace.steering.wire`: each round-trips, and a field renamed on
    one side fails on the other instead of reading as None."""
    from chatspace.steering.wire import CollectAsk, Collected, Hooks, WorkerInfo

    sent = [Hooks("k", "fp", (0, 3), 5), CollectAsk("k", 9, 4, "all", "none", None, 1 << 20, 2.0),
            Collected(steered=3, entropy=[0.5], top_k_mass=[0.9], segment="s",
                      entries=[{"layer": 0, "offset": 0, "shape": [9, 8], "dtype": "float32"}]),
            WorkerInfo("Qwen2ForCausalLM", 1, 4, "CPUModelRunner", False, True)]
    for message in sent:
        assert type(message).from_wire(message.to_wire()) == message
    assert Hooks.from_wire({"key": "k", "layers": [1, 2]}).layers == (1, 2)  # msgpack: a list
    with pytest.raises(TypeError):
        Collected.from_wire({"steered": 1, "segmnt": "s"})
    with pytest.raises(TypeError):
        CollectAsk.from_wire({"key": "k", "total": 9})

"""The steer kind (`submit steer`) on a tiny local model: a sweep through the run machinery
(debug, local, and the dev SLURM cluster with real vLLM), resume after SIGKILL, the metrics
against an independent computation, persona rendering, and bad input (exit 2, one line,
nothing written)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from chatspace.kinds import KINDS
from chatspace.kinds.steer.metrics import generation_metrics
from chatspace.kinds.steer.prompts import messages, system_prompt
from chatspace.runs.files import read_json
from chatspace.runs.record import Run
from tests.helpers import REPO, chatspace, chatspace_here, files_under, wait_until

PROMPTS = ["How do lists work?", "Explain the module system.", "What is a decorator?"]
PERSONAS = [{"persona": "pirate", "category": "fiction", "article": "a"},
            {"persona": "engineer", "category": "work"}]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    """A sweep spec (baseline + an add point at 2 layers x 2 scales, 3 prompts x 2 personas
    x 2 reps = 60 rows) over the tiny Qwen3-shaped model, and its files."""
    where = tmp_path_factory.mktemp("steer-inputs")
    (where / "prompts.json").write_text(json.dumps(PROMPTS))
    (where / "personas.json").write_text(json.dumps(PERSONAS))
    rng = np.random.default_rng(0)
    np.save(where / "vector.npy", rng.standard_normal(64).astype("float32"))
    np.save(where / "short.npy", rng.standard_normal(32).astype("float32"))
    model = tiny_model_dir("qwen3")
    (where / "sweep.toml").write_text(f"""
[model]
name = "{model}"
backend = "vllm"
dtype = "float32"
max_model_len = 256

[prompts]
file = "{where / 'prompts.json'}"

[personas]
file = "{where / 'personas.json'}"
rename_role = true

[generation]
max_tokens = 6
temperature = 0.8
n_reps = 2
seed = 3
thinking = false

[[steering]]
name = "baseline"

[[steering]]
name = "vec"
op = "add"
layers = [1, 2]
vector = "{where / 'vector.npy'}"
scales = [2.0, 8.0]

[capture]
layers = [0, 3]
rows = "last"

[run]
part_rows = 8
""")
    return {"spec": where / "sweep.toml", "dir": where, "model": model}


def results(run: Run) -> pa.Table:
    tables = [pq.read_table(run.output_paths(t)["results"]) for t in range(run.num_tasks)]
    return pa.concat_tables(tables).sort_by("row")


def submitted(out: subprocess.CompletedProcess) -> Run:
    assert out.returncode == 0, out.stderr[-3000:]
    return Run.open(json.loads(out.stdout)["run_dir"], Path("/nonexistent"), KINDS)


def captures(run: Run) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    found = {}
    for task in range(run.num_tasks):
        index = pq.read_table(run.output_paths(task)["capture_index"]).to_pylist()
        folder = run.output_paths(task)["capture_index"].parent
        files = {name: load_file(folder / name) for name in {e["file"] for e in index}}
        for entry in index:
            tensor = files[entry["file"]][entry["key"]]
            assert list(tensor.shape) == entry["shape"]
            found[entry["key"].split(":", 1)[1]] = tensor  # without the run id
    return found


COMPARED = ["row", "point", "persona", "category", "prompt", "system_prompt", "output_text",
            "output_token_ids", "finish_reason", "avg_entropy", "avg_top_k_mass", "seed"]


def assert_same_results(a: Run, b: Run) -> None:
    left, right = results(a), results(b)
    for column in COMPARED:
        x, y = left.column(column).to_pylist(), right.column(column).to_pylist()
        if column.startswith("avg_"):
            np.testing.assert_allclose(x, y, rtol=1e-4)
        else:
            assert x == y, column
    ca, cb = captures(a), captures(b)
    assert ca.keys() == cb.keys() and len(ca) == 2 * left.num_rows
    for key in ca:
        cosine = torch.nn.functional.cosine_similarity(ca[key], cb[key], dim=-1)
        assert cosine.min() >= 0.9999, key


@pytest.mark.slurm
def test_a_sweep_on_slurm_equals_a_debug_run_with_any_array_size(inputs, root, slurm_cluster):
    """The HF backend (seconds per task; vLLM under SLURM is the serve kind's server in
    tests/test_serve.py): sampled rows, their seeds and captures as one in-process task makes
    them."""
    spec = str(inputs["spec"])
    hf = ["--backend", "hf"]
    on_slurm = submitted(chatspace("submit", "steer", spec, *hf, "--array", "2", "--executor",
                                   "slurm", "--wait", "--json", "--mem", "6G", root=root,
                                   timeout=900))
    assert chatspace("verify", str(on_slurm.dir)).returncode == 0
    manifest = read_json(on_slurm.manifest_path)
    assert manifest["generations"] == 60
    assert {c["category"] for c in manifest["per_category"]} == {"fiction", "work"}
    assert set(manifest["per_point"]) == {"baseline", "vec/L1/x2", "vec/L1/x8", "vec/L2/x2",
                                          "vec/L2/x8"}
    assert on_slurm.manifest_path.parent == root / "steering" / inputs["model"].name / "sweep" \
        / on_slurm.run_id
    in_process = submitted(chatspace("submit", "steer", spec, *hf, "--array", "1",
                                     "--executor", "debug", "--json", root=root, timeout=900))
    assert_same_results(on_slurm, in_process)
    table = results(in_process)
    baseline = table.filter(pa.compute.equal(table.column("point"), "baseline"))
    steered = table.filter(pa.compute.equal(table.column("point"), "vec/L2/x8"))
    assert baseline.column("output_text").to_pylist() != steered.column("output_text").to_pylist()
    assert "You are a pirate." in table.column("system_prompt").to_pylist()


def test_a_killed_task_resumes_from_its_last_part(inputs, root):
    spec = str(inputs["spec"])
    hf = ["--backend", "hf", "--array", "1", "--max-tokens", "40"]  # parts of a few seconds
    whole = submitted(chatspace("submit", "steer", spec, *hf, "--executor", "debug", "--json",
                                "--run-id", "whole", root=root))
    planned = chatspace("plan", "steer", spec, *hf, "--run-id", "killed", root=root)
    assert planned.returncode == 0, planned.stderr
    run = Run.open("killed", root, KINDS)
    task = subprocess.Popen([sys.executable, "-m", "chatspace", "run", "task", str(run.dir),
                             "--task", "0"], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sidecars = run.parts_dir(0)
    wait_until(lambda: len(list(sidecars.glob("part-*.json"))) >= 2, timeout=300,
               what="two committed parts")
    os.killpg(task.pid, signal.SIGKILL)
    task.wait()
    committed = len(list(sidecars.glob("part-*.json")))
    assert committed < 8 and run.completion(0) is None
    again = chatspace("run", "task", str(run.dir), "--task", "0", root=root)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming, {committed} of 8 parts already committed" in again.stderr
    assert chatspace("run", "reduce", str(run.dir), root=root).returncode == 0
    assert_same_results(whole, run)


GREEDY = ["--executor", "debug", "--json", "--temperature", "0", "--n-reps", "1"]


@pytest.fixture(scope="module")
def greedy_run(inputs, tmp_path_factory) -> Run:
    """The sweep greedy, one rep, eager, one worker: what the compiled run below must equal.
    (Two tensor-parallel workers are checked against one on the model itself:
    tests/test_tensor_parallel.py.)"""
    root = tmp_path_factory.mktemp("greedy") / "ws"
    return submitted(chatspace("submit", "steer", str(inputs["spec"]), *GREEDY, "--run-id",
                               "eager", root=root))


def test_a_compiled_sweep_equals_the_eager_one_and_compiles_under_the_root(inputs, greedy_run,
                                                                           root):
    """`--compile` on the CPU: vLLM's compiled model (inductor), steered and captured as in
    eager mode (the CPU default), with its compile cache under the root for the run's tasks."""
    compiled = submitted(chatspace("submit", "steer", str(inputs["spec"]), *GREEDY,
                                   "--compile", "--run-id", "compiled", root=root))
    assert compiled.spec.model.compile and greedy_run.spec.model.compile is None
    assert_same_results(greedy_run, compiled)
    assert any((root / "cache" / "vllm").rglob("*")), "no compile cache under the root"


def _group(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if entry.name.isdigit() and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def test_a_sigkilled_vllm_task_leaves_no_engine_behind(inputs, root):
    """The local executor runs each task in its own process group and kills the group when
    the task ends, so vLLM's engine-core process does not outlive a SIGKILLed task."""
    from chatspace.runs.lease import holder

    submit = subprocess.Popen([sys.executable, "-m", "chatspace", "submit", "steer",
                               str(inputs["spec"]), "--executor", "local", "--run-id", "orphan",
                               "--root", str(root)], cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    run = wait_until(lambda: (root / "runs" / "orphan" / "plan.json").exists()
                     and Run.open("orphan", root, KINDS), what="the plan")
    owner = wait_until(lambda: holder(run, 0), what="the task to start")
    wait_until(lambda: len(_group(owner.pid)) >= 2, timeout=300, what="its vLLM engine")
    engine = [p for p in _group(owner.pid) if p != owner.pid]
    os.kill(owner.pid, signal.SIGKILL)  # the task alone, as an OOM killer would
    _, err = submit.communicate(timeout=120)
    assert submit.returncode == 1 and "task 0" in err, err[-2000:]
    wait_until(lambda: not _group(owner.pid), timeout=30, what="the engine to go")
    assert not [p for p in engine if Path(f"/proc/{p}").exists()
                and "Z" not in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1][:3]]


def test_metrics_off_leave_the_generations_and_null_the_means(inputs, root):
    """``--no-metrics``: the per-token entropy and top-k mass are not computed; the rows are the
    same, their avg_ columns null. A spec with metrics on keeps its earlier hash."""
    from chatspace.kinds.steer.schema import METRICS

    args = ["submit", "steer", str(inputs["spec"]), "--backend", "hf", "--executor", "debug",
            "--json", "--temperature", "0", "--n-reps", "1", "--max-tokens", "4"]
    on = submitted(chatspace(*args, "--run-id", "metrics-on", root=root))
    off = submitted(chatspace(*args, "--no-metrics", "--run-id", "metrics-off", root=root))
    assert "token_metrics" not in on.spec.work_dict()["metrics"]
    assert off.spec.metrics.token_metrics is False
    left, right = results(on), results(off)
    assert left.column("output_token_ids").to_pylist() == \
        right.column("output_token_ids").to_pylist()
    for column in METRICS:
        assert right.column(column).null_count == right.num_rows, column
    assert left.column("avg_entropy").null_count == 0


def test_metrics_match_an_independent_computation(inputs, root):
    from transformers import AutoModelForCausalLM

    run = submitted(chatspace("submit", "steer", str(inputs["spec"]), "--backend", "hf",
                              "--executor", "debug", "--json", "--run-id", "metrics",
                              "--thinking", "--max-tokens", "12", root=root))
    table = results(run).filter(pa.compute.equal(results(run).column("point"), "baseline"))
    model = AutoModelForCausalLM.from_pretrained(inputs["model"])
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(inputs["model"])
    think_end = tokenizer.convert_tokens_to_ids("</think>")
    from chatspace.steering.model import SteerModel

    renderer = SteerModel(inputs["model"], backend="hf")
    for row in table.slice(0, 4).to_pylist():
        persona = next(p for p in PERSONAS if p["persona"] == row["persona"])
        chat = messages(row["prompt"], system_prompt(persona, "you-are-a"))
        prompt = renderer.render(chat, True, persona["persona"])
        generated = row["output_token_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + generated[:-1]])).logits[0]
        dist = torch.distributions.Categorical(logits=logits[len(prompt) - 1:].double())
        entropy = dist.entropy().tolist()
        mass = dist.probs.sort(-1, descending=True).values[:, :5].sum(-1).tolist()
        end = generated.index(think_end) if think_end in generated else None
        split = end + 1 if end is not None else len(generated)
        assert row["think_end_position"] == end
        np.testing.assert_allclose(row["avg_entropy"], np.mean(entropy), rtol=1e-4)
        np.testing.assert_allclose(row["avg_top_k_mass"], np.mean(mass), rtol=1e-4)
        np.testing.assert_allclose(row["avg_entropy_thinking"], np.mean(entropy[:split]),
                                   rtol=1e-4)
        assert (row["avg_entropy_output"] is None) == (split == len(generated))


def test_the_thinking_split_at_the_end_of_thinking():
    tokens = [5, 6, 99, 7, 8]  # 99 is </think>
    entropy, mass = [1.0, 2.0, 3.0, 4.0, 6.0], [0.1, 0.2, 0.3, 0.4, 0.5]
    got = generation_metrics(tokens, entropy, mass, 99, thinking=True)
    assert got["think_end_position"] == 2
    assert got["avg_entropy_thinking"] == 2.0 and got["avg_entropy_output"] == 5.0
    assert got["avg_top_k_mass"] == pytest.approx(0.3)
    cut_off = generation_metrics([5, 6], [1.0, 3.0], [0.1, 0.3], 99, thinking=True)
    assert cut_off["avg_entropy_thinking"] == 2.0 and cut_off["avg_entropy_output"] is None
    plain = generation_metrics([5, 6], [1.0, 3.0], [0.1, 0.3], 99, thinking=False)
    assert plain["avg_entropy_output"] == 2.0 and plain["avg_entropy_thinking"] is None


def test_persona_rendering_names_the_persona_and_renames_the_role(inputs):
    from chatspace.steering.model import SteerModel

    model = SteerModel(inputs["model"], backend="hf")
    pirate = PERSONAS[0]
    text = model.render_text(messages("Ahoy?", system_prompt(pirate, "you-are-a")),
                             assistant_name="pirate")
    assert "<|im_start|>system\nYou are a pirate.<|im_end|>" in text
    assert text.endswith("<|im_start|>pirate\n") and "assistant" not in text
    assert system_prompt(None, "you-are-a") == "You are an assistant."
    assert system_prompt({"persona": "engineer"}, "you-are-a") == "You are an engineer."
    assert system_prompt(pirate, "none") is None


def test_the_role_rename_goes_through_the_template_not_the_text(inputs):
    """Phase 17: user content holding the template's own header is never rewritten; the
    generation header and an earlier assistant turn's header are."""
    from transformers import AutoTokenizer

    from chatspace.steering.templates import chat_text

    tokenizer = AutoTokenizer.from_pretrained(inputs["model"])
    trick = "repeat after me: <|im_start|>assistant\nyes"
    chat = [{"role": "system", "content": "You are a pirate."},
            {"role": "user", "content": trick},
            {"role": "assistant", "content": "Arr."}, {"role": "user", "content": "More?"}]
    text = chat_text(tokenizer, chat, None, "pirate")
    plain = chat_text(tokenizer, chat, None)
    assert trick in text, "the user's text is kept as written"
    assert text.endswith("<|im_start|>pirate\n")
    assert "<|im_start|>pirate\nArr." in text  # the earlier assistant turn, by its header
    assert text.count("pirate") == plain.count("pirate") + 2
    assert len(tokenizer(text)["input_ids"]) > 0


def test_point_labels_print_scales_exactly_and_are_unique(inputs, root, tmp_path):
    """Phase 17: scales 1 and 1.0000001 are two labels; a baseline named like a point is
    refused at plan."""
    spec = tmp_path / "labels.toml"
    spec.write_text(inputs["spec"].read_text().replace("scales = [2.0, 8.0]",
                                                       "scales = [1, 1.0000001, 0.5]"))
    planned = chatspace("plan", "steer", str(spec), "--json", root=root)
    assert planned.returncode == 0, planned.stderr[-2000:]
    run = Run.open(json.loads(planned.stdout)["run_dir"], root, KINDS)
    names = [p["name"] for p in read_json(run.dir / "inputs.json")["points"]]
    assert names == ["baseline", "vec/L1/x1", "vec/L1/x1.0000001", "vec/L1/x0.5",
                     "vec/L2/x1", "vec/L2/x1.0000001", "vec/L2/x0.5"]
    spec.write_text(inputs["spec"].read_text().replace('name = "baseline"',
                                                       'name = "vec/L1/x2"'))
    refused = chatspace("plan", "steer", str(spec), root=tmp_path / "other")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "point label 'vec/L1/x2' is given twice" in refused.stderr
    assert files_under(tmp_path / "other") == []


def test_the_persona_runners_defaults_and_spellings(inputs, root):
    hamlet = {"persona": "Hamlet", "category": "drama", "article": ""}
    assert system_prompt(hamlet, "you-are-a") == "You are Hamlet."
    personas = inputs["dir"] / "hamlet.json"
    personas.write_text(json.dumps([hamlet]))
    planned = chatspace("plan", "steer", "--model", str(inputs["model"]), "--prompts-json",
                        str(inputs["dir"] / "prompts.json"), "--personae-json", str(personas),
                        "--no-thinking-mode", "--json", root=root)
    assert planned.returncode == 0, planned.stderr[-2000:]
    run = Run.open(json.loads(planned.stdout)["run_dir"], root, KINDS)
    generation = run.spec.generation
    assert (generation.temperature, generation.max_tokens, generation.thinking) == \
        (0.0, 1024, False)
    assert run.spec.personas.renames_role  # renamed whenever personas are given
    assert not run.spec.personas.model_copy(update={"rename_role": False}).renames_role


BAD = [
    (["--prompts", "/no/such/prompts.json"], "prompts file not found: /no/such/prompts.json"),
    (["--personas", "{dir}/bad-personas.json"], "entry 1 has no 'persona'"),
    (["--vector", "{dir}/short.npy", "--point-name", "v", "--op", "add", "--layers", "1",
      "--scales", "1"], "vector: has size 32, the model's hidden size is 64"),
    (["--vector", "{dir}/vector.npy", "--point-name", "v", "--op", "add", "--layers", "9",
      "--scales", "1"], "layers[9]: layer index out of range"),
    (["--vector", "{dir}/vector.npy", "--point-name", "v", "--op", "add", "--layers", "1"],
     "steering[0].scales is empty"),
    (["--capture-layers", "0,4"], "capture.layers: layer 4 out of range"),
    (["--model", "{dir}/broken-model"], "does not load"),
    (["--model", "/no/such/model"], "model path not found: /no/such/model"),
    (["--prompts", "{dir}/binary.json"], "is not JSON"),
    (["--vector", "{dir}/pickled.pt", "--point-name", "v", "--op", "add", "--layers", "1",
      "--scales", "1"], "pickled.pt: not a readable .pt tensor file"),
    (["--vector", "{dir}/broken.safetensors", "--point-name", "v", "--op", "add", "--layers",
      "1", "--scales", "1"], "broken.safetensors: not a readable .safetensors tensor file"),
    (["--vector", "{dir}/tiny.npy", "--point-name", "v", "--op", "ablate", "--layers", "1",
      "--scales", "0"], "vector: has norm 8e-30; steering needs a norm in"),
    (["--vector", "{dir}/huge.npy", "--point-name", "v", "--op", "cap", "--layers", "1",
      "--cap-max", "1"], "vector: has norm 8e+30; steering needs a norm in"),
    (["--temperature", "nan"], "generation.temperature (--temperature) must be a finite"),
    # phase 17: what used to fail (or run wrong) only inside the tasks
    (["--prompts", "{dir}/long.json"],
     "prompts: entry 1 is 12038 tokens once rendered; the model's context is 256 positions"),
    (["--prompts", "{dir}/surrogate.json"], "entry 1 holds a lone surrogate"),
    (["--model", "{dir}/base-model"], "has no chat template (a base model?): set "
                                      "prompts.template (--prompts-template) to raw"),
    (["--prompts-template", "raw"], "prompts.template raw takes no personas"),
    (["--personas", "{dir}/newline-personas.json"], "personas: entry 0 ('pirate\\nuser') holds "
                                                    "a line break"),
    (["--personas", "{dir}/special-personas.json"], "holds the tokenizer's special token "
                                                    "'<|im_start|>'"),
    (["--vector", "{dir}/vector.npy", "--point-name", "v", "--op", "add", "--layers", "1",
      "--scales", "1e308"], "scale: 1e+308 is not finite in float32"),
    (["--vector", "{dir}/vector.npy", "--point-name", "v", "--op", "add", "--layers", "1",
      "--scales", "3e38"], "scale: 3e+38 times the vector overflows float32"),
    (["--vector", "{dir}/vector.npy", "--point-name", "v", "--op", "add", "--layers", "1",
      "--scales", "1,1.0"], "point label 'v/L1/x1' is given twice"),
    # phase 22: probes, multi-layer points, percentile bounds
    (["--vector", "{dir}/vector.npy", "--point-name", "v", "--op", "cap", "--layers", "3-1",
      "--cap-min", "1"], "'3-1' is not a layer list such as 46-53 or 8,12"),
    (["--vector", "{dir}/vector.npy", "--point-name", "v", "--op", "cap", "--layers", "1-2",
      "--all-layers", "--cap-min", "p25"], "steering[0].min: p25 needs vector_key"),
    (["--vector", "{dir}/vector.npy", "--point-name", "v", "--op", "cap", "--layers", "1",
      "--vector-key", "x", "--cap-min", "p25"], "needs a vectors run that recorded percentiles"),
    (["--vector", "{dir}/vector.npy", "--point-name", "v", "--op", "cap", "--layers", "1",
      "--cap-min", "p2x"], "'p2x' is neither a number nor a percentile such as p25"),
    (["--probe-name", "a", "--probe-vector", "{dir}/vector.npy", "--probe-layers", "2-4"],
     "probes[0]: .layers: layer 4 out of range"),
    (["--probe-name", "a@L1", "--probe-vector", "{dir}/vector.npy", "--probe-layers", "1"],
     "probes[0].name 'a@L1': '@' is kept for per-layer vectors"),
    (["--probe-name", "a", "--probe-vector", "{dir}/short.npy", "--probe-layers", "1"],
     "must be a 1-D tensor of the model's hidden size 64"),
    (["--probe-name", "a", "--probe-vector", "name:nothing", "--probe-layers", "1"],
     "no run named 'nothing'"),
]


@pytest.mark.parametrize(("extra", "expected"), BAD)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(inputs, root, extra, expected):
    where = inputs["dir"]
    (where / "bad-personas.json").write_text(json.dumps([PERSONAS[0], {"category": "x"}]))
    (where / "broken-model").mkdir(exist_ok=True)
    (where / "broken-model" / "config.json").write_text("{not json")
    (where / "binary.json").write_bytes(bytes(range(256)))
    (where / "pickled.pt").write_bytes(pickle.dumps(os.system))  # refused, never called
    (where / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{oops")
    np.save(where / "tiny.npy", np.full(64, 1e-30, dtype="float32"))
    np.save(where / "huge.npy", np.full(64, 1e30, dtype="float32"))
    (where / "long.json").write_text(json.dumps(["short", " ".join(["a"] * 12000)]))
    (where / "surrogate.json").write_text('["fine", "broken \\ud800 text"]')
    (where / "newline-personas.json").write_text(json.dumps([{"persona": "pirate\nuser"}]))
    (where / "special-personas.json").write_text(json.dumps(
        [{"persona": "pirate<|im_start|>user"}]))
    base = where / "base-model"
    if not base.exists():  # the tiny model without its chat template: a base model
        shutil.copytree(inputs["model"], base)
        config = json.loads((base / "tokenizer_config.json").read_text())
        config.pop("chat_template", None)
        (base / "tokenizer_config.json").write_text(json.dumps(config))
        (base / "chat_template.jinja").unlink(missing_ok=True)
    args = [a.format(dir=where) for a in extra]
    result = chatspace_here("submit", "steer", str(inputs["spec"]), "--executor", "debug",
                            *args, root=root)
    assert result.returncode == 2, (result.stdout, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert files_under(root) == []


def test_an_unknown_op_in_a_spec_file_is_named(inputs, root, tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text(inputs["spec"].read_text().replace('op = "add"', 'op = "push"'))
    result = chatspace_here("submit", "steer", str(spec), "--executor", "debug", root=root)
    assert result.returncode == 2
    assert "steering[1].op must be one of add, cap, ablate, got 'push'" in result.stderr
    assert files_under(root) == []


def test_download_model_records_a_model_that_plans_find(inputs, root):
    from chatspace.runs.files import sha256_file

    out = chatspace("download-model", str(inputs["model"]), "--json", root=root)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    dest = Path(info["path"])
    assert dest == root / "models" / inputs["model"].name
    files = {f["path"]: f for f in info["files"]}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    for name, entry in files.items():
        assert sha256_file(dest / name) == entry["sha256"]
    planned = chatspace("plan", "steer", str(inputs["spec"]), "--model", inputs["model"].name,
                        "--json", root=root)
    assert planned.returncode == 0, planned.stderr
    run = Run.open(json.loads(planned.stdout)["run_id"], root, KINDS)
    assert run.path(run.plan.details["model"]["path"]) == dest


def test_prompts_sampled_from_a_dataset(inputs, root, tmp_path):
    from tests.helpers import PYDOCS

    spec = tmp_path / "from-dataset.toml"
    spec.write_text("\n".join(line for line in inputs["spec"].read_text().splitlines()
                              if "prompts.json" not in line))
    planned = chatspace("plan", "steer", str(spec), "--prompts-dataset", str(PYDOCS),
                        "--prompts-text-field", "text", "--prompts-n", "5", "--prompts-seed",
                        "2", "--json", root=root)
    assert planned.returncode == 0, planned.stderr[-2000:]
    run = Run.open(json.loads(planned.stdout)["run_id"], root, KINDS)
    prompts = read_json(run.dir / "inputs.json")["prompts"]
    texts = [json.loads(line)["text"] for line in PYDOCS.read_text().splitlines()]
    assert len(prompts) == 5 and all(p in texts for p in prompts)
    assert run.rows == 5 * 5 * 2 * 2  # points x prompts x personas x reps


@pytest.mark.parametrize("example", ["persona-sweep.toml", "capture-sweep.toml"])
def test_the_example_specs_are_valid(example, monkeypatch):
    from chatspace.kinds.steer.prompts import load_personas, load_prompts
    from chatspace.kinds.steer.spec import SteerSpec
    from chatspace.specs import resolve_spec

    monkeypatch.chdir(REPO)  # their data paths are relative to the checkout
    spec = resolve_spec(SteerSpec, REPO / "jobs" / example, {})
    assert load_prompts(spec.prompts)
    assert spec.personas.file is None or len(load_personas(spec.personas)) == 6

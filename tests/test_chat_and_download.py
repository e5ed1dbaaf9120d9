"""Chat datasets (real chatterbot-corpus dialogues as a messages column) and
`download-dataset` into the workspace layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import chatterbot_corpus
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.helpers import PYDOCS, chatspace, embed, read_run

CORPUS = Path(chatterbot_corpus.__file__).parent / "data" / "english"


@pytest.fixture
def chat_jsonl(tmp_path: Path) -> tuple[Path, list[list[dict]]]:
    dialogues = []
    for path in sorted(CORPUS.glob("*.yml")):
        for turns in yaml.safe_load(path.read_text()).get("conversations", []):
            dialogues.append([{"role": "assistant" if k % 2 else "user", "content": str(t)}
                              for k, t in enumerate(turns)])
    dialogues.append([{"role": "user", "content": "Is anyone there?"}])  # no assistant turn
    out = tmp_path / "chat.jsonl"
    out.write_text("".join(json.dumps({"conv": i, "messages": m}) + "\n"
                           for i, m in enumerate(dialogues)))
    return out, dialogues


def test_first_assistant_extraction(root, chat_jsonl):
    path, dialogues = chat_jsonl
    run = embed(root, path, n=len(dialogues), array=2,
                dataset={"text_field": None, "messages_field": "messages",
                         "id_field": "conv"})
    table = read_run(run)
    expected = {str(i): d[1]["content"] for i, d in enumerate(dialogues) if len(d) > 1}
    got = dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True))
    assert got == expected
    manifest = json.loads(run.manifest_path.read_text())
    assert manifest["rows_skipped"]["reasons"] == {"no-assistant-turn": 1}
    assert json.loads(table.column("metadata")[0].as_py())["extract"] == "first-assistant"


def test_conversation_extraction(root, chat_jsonl):
    path, dialogues = chat_jsonl
    run = embed(root, path, n=40, array=1,
                dataset={"text_field": None, "messages_field": "messages",
                         "extract": "conversation", "id_field": "conv"})
    for row_id, text in zip(read_run(run).column("id").to_pylist(),
                            read_run(run).column("text").to_pylist(), strict=True):
        turns = dialogues[int(row_id)]
        assert text == "\n".join(f"{m['role']}: {m['content']}" for m in turns)


def test_download_dataset_records_rows_and_features(root):
    result = chatspace("download-dataset", str(PYDOCS), "--json", root=root)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    dest = Path(info["path"])
    assert dest == root / "datasets" / "raw" / "local" / "pydocs"
    assert info["rows"] == 2000 and set(info["features"]) == {"id", "doc", "text"}
    assert pq.read_table(dest / info["files"][0]["path"]).num_rows == 2000
    # the recorded copy is itself a dataset that chatspace can plan from
    planned = chatspace("plan", "embed", "--dataset", str(dest), "--text-field", "text",
                        "--n", "10", "--json", root=root)
    assert planned.returncode == 0, planned.stderr


BUILD_HF_CACHE = """
import glob, os, shutil, sys
import datasets
src, home = sys.argv[1], os.environ["HF_HOME"]
loaded = datasets.load_dataset("parquet", data_files={"train": f"{src}/train.parquet",
                                                      "test": f"{src}/test.parquet"})
built = os.path.dirname(loaded["train"].cache_files[0]["filename"])
dest = os.path.join(home, "datasets", "testorg___pydocs", "default", "0.0.0",
                    os.path.basename(built))
shutil.copytree(built, dest, ignore=shutil.ignore_patterns("*.lock"))
for path in glob.glob(f"{dest}/parquet-*.arrow"):
    os.rename(path, path.replace("parquet-", "pydocs-"))
"""


@pytest.fixture
def hf_home(tmp_path: Path) -> Path:
    """An HF cache holding dataset `testorg/pydocs` as `datasets` caches a hub dataset (built
    by `datasets` itself from real passages; the hub is never contacted)."""
    rows = [json.loads(line) for line in PYDOCS.read_text().splitlines()[:30]]
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:20]), src / "train.parquet")
    pq.write_table(pa.Table.from_pylist(rows[20:]), src / "test.parquet")
    home = tmp_path / "hf"
    env = {**os.environ, "HF_HOME": str(home)}
    subprocess.run([sys.executable, "-c", BUILD_HF_CACHE, str(src)], env=env, check=True,
                   capture_output=True)
    return home


def test_hf_dataset_by_name_from_the_local_cache(root, hf_home):
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    no_split = chatspace("plan", "embed", "--dataset", "testorg/pydocs", "--text-field",
                         "text", "--n", "5", root=root, env=env)
    assert no_split.returncode == 2 and "has splits train, test" in no_split.stderr
    result = chatspace("submit", "embed", "--dataset", "testorg/pydocs", "--split", "test",
                       "--text-field", "text", "--p", "1", "--executor", "debug", "--json",
                       root=root, env=env)
    assert result.returncode == 0, result.stderr
    manifest = json.loads(Path(json.loads(result.stdout)["manifest"]).read_text())
    assert manifest["source"] == "hf" and manifest["rows_total"] == 10
    assert "/testorg__pydocs/test/" in manifest["shards"][0]["path"]
    shard = pq.read_table(root / manifest["shards"][0]["path"])
    assert shard.column("id").to_pylist()[:2] == ["test:0", "test:1"]
    assert shard.column("split")[0].as_py() == "test"
    recorded = chatspace("download-dataset", "testorg/pydocs", "--split", "train", "--json",
                         root=root, env=env)
    assert recorded.returncode == 0, recorded.stderr
    info = json.loads(recorded.stdout)
    assert info["source"] == "hf" and info["rows"] == 20
    assert info["path"] == str(root / "datasets" / "raw" / "hf" / "testorg__pydocs" / "train")

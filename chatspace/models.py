"""Models on local disk: a name resolves to a directory that is a path, a model recorded under
the root (``download-model``), or a snapshot in the HF cache; tasks never download.

``download-model`` records a model from a local directory, the HF cache or (on a login node
that reaches it) the Hub under ``{root}/models/{label}/`` (config, tokenizer, weights;
``_info.json`` with the sha256 of every file and the revision's commit), so that tasks on
compute nodes load it from the shared root.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from chatspace.data.hub import check_revision, checked_listing, fetch, hub_offline
from chatspace.errors import BadInput
from chatspace.names import check_name, check_replaceable, replace_recorded, staging_dir
from chatspace.runs.files import check_writable, sha256_file, tool_info, write_json
from chatspace.runs.formats import ModelInfo, RecordedFile

# Files worth copying from a model directory (weights, config, tokenizer, chat template).
MODEL_FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken")
INFO = ModelInfo.file_name()  # the recording's own record, which marks it as chatspace's


@dataclass(frozen=True)
class ModelRef:
    label: str  # used in output paths and result columns
    path: str


def label_of(name: str) -> str:
    return name.replace("/", "__")


def find_model(name: str, root: Path | None = None,
               markers: tuple[str, ...] = ("config.json",)) -> ModelRef:
    """The local directory of model `name`; BadInput when there is none."""
    path = Path(name).expanduser()
    if path.exists():
        if not any((path / marker).exists() for marker in markers):
            raise BadInput(f"model path {name} has no {' or '.join(markers)}: not a "
                           "model directory")
        return ModelRef(path.resolve().name, str(path.resolve()))
    if name.startswith((".", "/", "~")):
        raise BadInput(f"model path not found: {name}")
    if root is not None and ModelInfo.path_in(root, label=label_of(name)).exists():
        return ModelRef(label_of(name), str(ModelInfo.folder_in(root, label=label_of(name))))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(name, local_files_only=True)
    except Exception:
        raise BadInput(f"model {name!r} is neither a local directory nor in the HF cache "
                       "(models cannot be downloaded at run time)") from None
    return ModelRef(label_of(name), local)


class ModelShape(NamedTuple):
    """What a plan needs of a model: its sizes, its context and its tokenizer."""

    hidden_size: int
    num_layers: int
    context: int | None  # positions (max_position_embeddings), when the config says
    tokenizer: Any


def model_shape(path: str, name: str) -> ModelShape:
    """The shape of a model directory; BadInput when it does not load."""
    from transformers import AutoConfig, AutoTokenizer

    from chatspace.steering.hf_backend import check_architecture

    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # transformers raises many kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(f"model {name}: does not load: {first}") from None
    try:
        check_architecture(config.architectures or [type(config).__name__])
    except ValueError as exc:
        raise BadInput(f"model {name}: {exc}") from None
    return ModelShape(config.hidden_size, config.num_hidden_layers,
                      getattr(config, "max_position_embeddings", None), tokenizer)


def record_model(name: str, root: Path, revision: str | None = None,
                 include: list[str] | None = None) -> dict[str, Any]:
    """Copy model `name` under ``{root}/models/{label}``: a local directory as it is, a Hub
    name fetched with `huggingface_hub` (the HF cache first; only the cache when
    ``HF_HUB_OFFLINE=1``). `include`: the files to take (globs; default: weights, config,
    tokenizer, chat template)."""
    check_writable(root)
    check_revision(revision)
    patterns = list(include or MODEL_FILES)
    commit = None
    if Path(name).expanduser().exists() or hub_offline():
        if revision is not None:
            raise BadInput("--revision needs the Hub (a local directory, or "
                           "HF_HUB_OFFLINE=1, has no revisions)")
        ref = find_model(name)
    else:
        check_name(label_of(name), "model name")
        snapshot = fetch(name, "model", checked_listing(name, "model", revision)[0], patterns)
        ref, commit = ModelRef(label_of(name), str(snapshot.path)), snapshot.commit
    check_name(ref.label, "model name")
    source = Path(ref.path)
    dest = check_replaceable(root, ModelInfo.folder_in(root, label=ref.label), INFO)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(dest.parent)
    try:
        files = []
        for src in sorted({p for pattern in patterns for p in source.glob(pattern)
                           if p.is_file()}):
            shutil.copyfile(src.resolve(), staging / src.name)  # cache entries are links
            files.append(RecordedFile(src.name, src.resolve().stat().st_size,
                                      sha256_file(staging / src.name)))
        if not files:
            raise BadInput(f"model {name}: no file matches {', '.join(patterns)}")
        info = ModelInfo(name=name, label=ref.label, copied_from=str(source),
                         revision=revision, commit=commit, tool=tool_info(),
                         files=tuple(sorted(files, key=lambda f: f.path)))
        write_json(staging / INFO, info.to_dict())
        replace_recorded(staging, dest, root, INFO)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {**info.to_dict(), "path": str(dest)}

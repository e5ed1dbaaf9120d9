"""Typed job specs: read from TOML, overridden by CLI flags, validated once here.

A spec file has one table per concern::

    [dataset]   name, subset, split, text_field | messages_field (+ extract), id_field
    [sampling]  seed, n | p, max_rows
    [model]     name, batch_size, tokens_per_batch, bucket_min_tokens, bucket_max_tokens,
                compile, dtype, device
    [run]       array, part_rows
    [slurm]     partition, account, qos, time, mem, cpus_per_task, gpus_per_task, ...

Everything downstream receives an `EmbedSpec` and trusts it.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatspace.errors import BadInput

EXTRACT_MODES = ("first-assistant", "conversation")
DTYPES = ("float32", "float16", "bfloat16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DatasetConfig:
    name: str = ""
    subset: str | None = None
    split: str | None = None
    text_field: str | None = None
    messages_field: str | None = None
    extract: str = "first-assistant"
    id_field: str | None = None


@dataclass(frozen=True)
class SamplingConfig:
    seed: int = 0
    n: int | None = None
    p: float | None = None
    max_rows: int | None = None


@dataclass(frozen=True)
class ModelConfig:
    name: str | None = None
    batch_size: int = 64
    tokens_per_batch: int | None = None
    bucket_min_tokens: int = 16
    bucket_max_tokens: int = 512
    compile: bool = False
    dtype: str = "float32"
    device: str = "auto"


@dataclass(frozen=True)
class RunConfig:
    array: int = 1
    part_rows: int = 2048


@dataclass(frozen=True)
class SlurmConfig:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    mem: str | None = None
    cpus_per_task: int | None = None
    gpus_per_task: int | None = None
    constraint: str | None = None
    exclude: str | None = None
    array_parallelism: int | None = None
    job_name: str | None = None
    sbatch_args: list[str] = field(default_factory=list)
    container: str | None = None


@dataclass(frozen=True)
class EmbedSpec:
    dataset: DatasetConfig
    sampling: SamplingConfig
    model: ModelConfig
    run: RunConfig
    slurm: SlurmConfig

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def work_dict(self) -> dict[str, Any]:
        """The part of the spec that determines the outputs (not where they run)."""
        out = self.to_dict()
        del out["slurm"]
        return out


SECTIONS: dict[str, type] = {
    "dataset": DatasetConfig,
    "sampling": SamplingConfig,
    "model": ModelConfig,
    "run": RunConfig,
    "slurm": SlurmConfig,
}


def read_spec_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a TOML job spec into ``{section: {key: value}}``."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise BadInput(f"spec file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"spec file {path} is not valid TOML: {exc}") from None
    for section, table in raw.items():
        if section not in SECTIONS or not isinstance(table, dict):
            raise BadInput(f"{path}: unknown table [{section}] (known: {', '.join(SECTIONS)})")
    return raw


def _check_type(where: str, value: Any, hint: Any) -> Any:
    """Check one value against a dataclass field's type hint (str/int/float/bool/list, or
    Optional of them)."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        origin = typing.get_origin(kind) or kind
        if origin is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin in (str, bool, list) and isinstance(value, origin):
            return value
    names = " or ".join(getattr(k, "__name__", str(k)) for k in allowed if k is not type(None))
    raise BadInput(f"{where} must be {names}, got {value!r}")


def build_section(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise BadInput(f"unknown key {where}.{key} (known: {', '.join(sorted(known))})")
    checked = {k: _check_type(f"{where}.{k}", v, hints[k]) for k, v in values.items()}
    return cls(**checked)


def resolve_spec(
    spec_path: str | Path | None, overrides: dict[str, dict[str, Any]]
) -> EmbedSpec:
    """Merge a spec file (optional) with CLI overrides (``None`` values are ignored), then
    validate every field that can be checked without touching the dataset."""
    merged: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    if spec_path is not None:
        for section, table in read_spec_file(spec_path).items():
            merged[section].update(table)
    for section, table in overrides.items():
        merged[section].update({k: v for k, v in table.items() if v is not None})
    spec = EmbedSpec(**{s: build_section(cls, merged[s], s) for s, cls in SECTIONS.items()})
    _validate(spec)
    return spec


def _validate(spec: EmbedSpec) -> None:
    ds, sm, md, rn = spec.dataset, spec.sampling, spec.model, spec.run
    if not ds.name:
        raise BadInput("dataset.name is required (--dataset NAME_OR_PATH)")
    if (ds.text_field is None) == (ds.messages_field is None):
        raise BadInput("give exactly one of dataset.text_field (--text-field) and "
                       "dataset.messages_field (--messages-field)")
    if ds.extract not in EXTRACT_MODES:
        raise BadInput(f"dataset.extract must be one of {', '.join(EXTRACT_MODES)}, "
                       f"got {ds.extract!r}")
    if (sm.n is None) == (sm.p is None):
        raise BadInput("give exactly one of sampling.n (--n) and sampling.p (--p); "
                       "--p 1 takes every row")
    if sm.n is not None and sm.n < 1:
        raise BadInput(f"sampling.n must be >= 1, got {sm.n}")
    if sm.p is not None and not 0 < sm.p <= 1:
        raise BadInput(f"sampling.p must be in (0, 1], got {sm.p}")
    if sm.max_rows is not None and sm.max_rows < 1:
        raise BadInput(f"sampling.max_rows must be >= 1, got {sm.max_rows}")
    for name in ("batch_size", "bucket_min_tokens", "bucket_max_tokens"):
        if getattr(md, name) < 1:
            raise BadInput(f"model.{name} must be >= 1, got {getattr(md, name)}")
    if md.tokens_per_batch is not None and md.tokens_per_batch < 1:
        raise BadInput(f"model.tokens_per_batch must be >= 1, got {md.tokens_per_batch}")
    if md.bucket_min_tokens > md.bucket_max_tokens:
        raise BadInput(f"model.bucket_min_tokens ({md.bucket_min_tokens}) exceeds "
                       f"model.bucket_max_tokens ({md.bucket_max_tokens})")
    if md.dtype not in DTYPES:
        raise BadInput(f"model.dtype must be one of {', '.join(DTYPES)}, got {md.dtype!r}")
    if md.device not in DEVICES and not md.device.startswith("cuda:"):
        raise BadInput(f"model.device must be one of {', '.join(DEVICES)} or cuda:N, "
                       f"got {md.device!r}")
    if rn.array < 1:
        raise BadInput(f"run.array (--array) must be >= 1, got {rn.array}")
    if rn.part_rows < 1:
        raise BadInput(f"run.part_rows must be >= 1, got {rn.part_rows}")


def spec_from_dict(data: dict[str, Any]) -> EmbedSpec:
    """Rebuild a spec saved in a run record (already validated when it was planned)."""
    return EmbedSpec(**{s: cls(**data[s]) for s, cls in SECTIONS.items()})

"""The seeds' single-machine embedding commands: ``embed-hf`` (sentence-transformers in this
process), ``embed-dataset`` (the OpenAI API in this process, a dry run unless --execute), and
the recording of inputs under the root: ``download-dataset``, ``download-model``. The first two
are `submit embed --array 1 --executor debug`."""

from __future__ import annotations

from typing import Any

import click

from chatspace.cli.options import json_option, resolve_root, root_option, spec_options
from chatspace.cli.output import emit
from chatspace.cli.runs import execute_option, run_id_option, submit_group
from chatspace.jobs import JOB_TYPES

EMBED = JOB_TYPES["embed"]


def _submit_in_process(ctx: click.Context, params: dict[str, Any]) -> None:
    params.update(array=1, executor="debug", parallelism=None, wait=False)
    ctx.invoke(submit_group.commands["embed"], **params)


@click.command("embed-hf")
@spec_options(EMBED)
@root_option
@run_id_option
@execute_option
@json_option
@click.pass_context
def embed_hf(ctx: click.Context, **params: Any) -> None:
    """Embed a dataset with a sentence-transformers model in this one process (the same run
    as `submit embed --array 1 --executor debug`). With `--backend openai` (flag or spec
    file) it is a dry run unless --execute, as every path into a paid API."""
    _submit_in_process(ctx, params)


@click.command("embed-dataset")
@spec_options(EMBED)
@root_option
@run_id_option
@execute_option
@json_option
@click.pass_context
def embed_dataset(ctx: click.Context, **params: Any) -> None:
    """Embed a dataset with the OpenAI embeddings API in this one process. Without --execute:
    a dry run that prints rows, exact tokens (tiktoken), requests, truncated rows, the cost at
    standard and Batch prices and the time at the rate limits, and writes nothing.

    Needs OPENAI_API_KEY (environment or ./.env) only with --execute; OPENAI_BASE_URL,
    OPENAI_EMBED_MODEL and OPENAI_TIMEOUT are read too. The text column defaults to `text`."""
    params["backend"] = "openai"
    if params["spec_file"] is None and not (params["text_field"] or params["messages_field"]):
        params["text_field"] = "text"
    _submit_in_process(ctx, params)


@click.command("download-dataset")
@click.argument("name")
@click.option("--subset", default=None)
@click.option("--split", default=None)
@root_option
@json_option
def download_dataset(name: str, subset: str | None, split: str | None, root: str | None,
                     as_json: bool) -> None:
    """Record dataset NAME (HF cache or local files) under ROOT/datasets/raw/, as Parquet with
    its row counts and features."""
    from chatspace.data.download import record_dataset

    info = record_dataset(name, subset, split, resolve_root(root))
    emit(as_json, info, [info["path"]])


@click.command("download-model")
@click.argument("name")
@root_option
@json_option
def download_model(name: str, root: str | None, as_json: bool) -> None:
    """Record model NAME (a local directory or a name in the HF cache) under ROOT/models/, with
    the sha256 of each file, so that tasks on compute nodes load it from the shared root
    (`--model NAME` then finds it there)."""
    from chatspace.models import record_model

    info = record_model(name, resolve_root(root))
    emit(as_json, info, [info["path"]])


COMMANDS = [embed_hf, embed_dataset, download_dataset, download_model]

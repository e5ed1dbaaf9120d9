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
from chatspace.errors import BadInput
from chatspace.kinds import KINDS

EMBED = KINDS["embed"]


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


def _name(argument: str | None, option: str | None, flag: str) -> str:
    """NAME given as the argument or as the original tools' option."""
    if (argument is None) == (option is None):
        raise BadInput(f"give the name once: as NAME or as {flag}")
    return argument or option


@click.command("download-dataset")
@click.argument("name", required=False)
@click.option("--name", "name_option", default=None, help="NAME (the original spelling).")
@click.option("--subset", "--config", default=None, help="The dataset's subset (config).")
@click.option("--split", default=None, help="The split (needed when there are several).")
@click.option("--revision", default=None, help="Hub: a branch, tag or commit (default main).")
@root_option
@json_option
def download_dataset(name: str | None, name_option: str | None, subset: str | None,
                     split: str | None, revision: str | None, root: str | None,
                     as_json: bool) -> None:
    """Record dataset NAME under ROOT/datasets/raw/ as Parquet, with its row counts, features,
    the sha256 of every file and, from the Hub, the commit.

    NAME is a local file or directory, or a Hub dataset fetched with huggingface_hub (HF_TOKEN,
    HF_ENDPOINT and HF_HOME honoured; an interrupted download resumes; cached copies are used
    when present). Run it on a login node: compute-node commands never reach the Hub. With
    HF_HUB_OFFLINE=1, only the local datasets cache is read."""
    from chatspace.data.download import record_dataset

    info = record_dataset(_name(name, name_option, "--name"), subset, split,
                          resolve_root(root), revision)
    emit(as_json, info, [info["path"]])


@click.command("download-model")
@click.argument("name", required=False)
@click.option("--repo-id", "repo_id", default=None, help="NAME (the original spelling).")
@click.option("--revision", default=None, help="Hub: a branch, tag or commit (default main).")
@click.option("--include", multiple=True, metavar="GLOB",
              help="Files to take (repeatable; default: weights, config, tokenizer, chat "
                   "template).")
@root_option
@json_option
def download_model(name: str | None, repo_id: str | None, revision: str | None,
                   include: tuple[str, ...], root: str | None, as_json: bool) -> None:
    """Record model NAME under ROOT/models/, with the sha256 of each file and, from the Hub,
    the commit, so that tasks on compute nodes load it from the shared root (`--model NAME`
    then finds it there).

    NAME is a local directory, a model in the HF cache, or a Hub model fetched with
    huggingface_hub (HF_TOKEN, HF_ENDPOINT, HF_HOME honoured; resumable). With
    HF_HUB_OFFLINE=1, only the cache is read."""
    from chatspace.models import record_model

    info = record_model(_name(name, repo_id, "--repo-id"), resolve_root(root), revision,
                        list(include) or None)
    emit(as_json, info, [info["path"]])


COMMANDS = [embed_hf, embed_dataset, download_dataset, download_model]

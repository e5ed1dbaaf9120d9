"""The `chatspace` command line. Exit codes: 0 success, 1 a run or task failed, 2 bad input."""

from __future__ import annotations

import logging
import os
import sys

import click

from chatspace.cli import chat, embed, observe, results, runs, serve
from chatspace.errors import BadInput, RunFailed
from chatspace.text import printable

# The only commands that may reach the Hub (on a login node); every other one runs offline.
ONLINE = ("download-dataset", "download-model")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """chatspace: plan, run and check SLURM batch jobs for ML research (embed datasets, steering
    sweeps).

    \b
    chatspace submit embed jobs/demo.toml --executor local
    chatspace submit steer jobs/persona-sweep.toml --model DIR --array 8
    chatspace status RUN · chatspace verify RUN · chatspace resume RUN
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if ctx.invoked_subcommand not in ONLINE:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


for command in (*runs.COMMANDS, *observe.COMMANDS, *embed.COMMANDS, *results.COMMANDS,
                *chat.COMMANDS, *serve.COMMANDS):
    cli.add_command(command)


def main() -> None:
    try:
        code = cli.main(prog_name="chatspace", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (BadInput, RunFailed) as exc:
        click.echo(f"chatspace: error: {printable(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)

"""Exceptions that map to the CLI's exit codes (2: bad input, 1: a run or task failed)."""


class BadInput(Exception):
    """Bad input or usage: the CLI prints the one-line message and exits 2, having written
    nothing."""

    exit_code = 2


class RunFailed(Exception):
    """A task or run failed: the message names the task and its log; the CLI exits 1."""

    exit_code = 1

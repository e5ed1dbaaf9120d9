"""`--smoke` for every benchmark: tiny sizes that run in seconds, so that a test runs each bench
and a bench cannot break unseen (tests/test_bench.py). A smoke run's figures mean nothing, and
a bench that measures plain vLLM before and after its own engine starts the plain one once."""

from __future__ import annotations

import argparse
import sys

# read when a bench is imported: the benchmark model's shape depends on it
SMOKE = "--smoke" in sys.argv[1:]


def parse_args(parser: argparse.ArgumentParser, **tiny: object) -> argparse.Namespace:
    """The bench's arguments, with `tiny` (argument name -> value) over them under --smoke."""
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, seconds: checks that the bench runs (its figures "
                             "mean nothing)")
    args = parser.parse_args()
    if args.smoke:
        for name, value in tiny.items():
            setattr(args, name, value)
    return args

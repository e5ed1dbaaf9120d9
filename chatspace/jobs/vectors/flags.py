"""The vectors job's CLI flags: one per key of its own spec tables."""

from __future__ import annotations

from chatspace.jobs.steer.flags import INTS
from chatspace.runs.job import Flag

VECTORS_FLAGS: list[Flag] = [
    ("--from-run|--from", "source", "runs",
     {"multiple": True, "help": "A finished steer run with captures (id or directory); "
                                "repeatable."}),
    ("--layers", "source", "layers", {"type": INTS, "help": "Layers to use, e.g. 8,12 "
                                                            "(default: every captured one)."}),
    ("--group-by", "groups", "by", {"help": "Results column whose values are the groups "
                                            "(persona, category, point, …; default persona)."}),
    ("--contrast", "groups", "contrasts",
     {"multiple": True, "help": "A:B: the mean of group A minus that of group B "
                                "(repeatable)."}),
    ("--baseline", "groups", "baseline", {"help": "Every other group against this one."}),
    ("--pca", "groups", "pca", {"type": int, "help": "Top K principal components of the "
                                                     "group means (default 0: none)."}),
    ("--normalize/--no-normalize", "groups", "normalize",
     {"default": None, "help": "Scale mean and contrast vectors to unit norm."}),
]

"""The kinds of batch work a run can be (embed, steer, vectors, serve, judge), each a package here,
and the registry that maps a run's ``kind`` to the `Kind` that runs it. The CLI hands the run
machinery a kind from here; the machinery never imports this package."""

from __future__ import annotations

from chatspace.kinds.embed import EmbedKind
from chatspace.kinds.judge import JudgeKind
from chatspace.kinds.serve import ServeKind
from chatspace.kinds.steer.kind import SteerKind
from chatspace.kinds.vectors.kind import VectorsKind
from chatspace.runs.kind import Kind

KINDS: dict[str, Kind] = {kind.name: kind for kind in (EmbedKind(), SteerKind(), VectorsKind(),
                                                     ServeKind(), JudgeKind())}

"""The vectors job's spec: which steer runs to read (``[source]``) and what to compute from
their captures (``[groups]``), plus the shared ``[run]`` and ``[slurm]`` tables."""

from __future__ import annotations

from dataclasses import dataclass, field

from chatspace.errors import BadInput
from chatspace.specs import JobSpec


@dataclass(frozen=True)
class SourceConfig:
    runs: list[str] = field(default_factory=list)  # steer run ids or run directories
    layers: list[int] | None = None  # default: every captured layer


@dataclass(frozen=True)
class GroupsConfig:
    by: str = "persona"  # a results column: persona, category, point, prompt_index, …
    contrasts: list[str] = field(default_factory=list)  # "A:B": mean(A) - mean(B)
    baseline: str | None = None  # every other group against this one
    pca: int = 0  # top principal components of the group means
    normalize: bool = False  # mean and contrast vectors scaled to unit norm

    def pairs(self) -> list[tuple[str, str]]:
        return [tuple(c.split(":", 1)) for c in self.contrasts]  # type: ignore[misc]


@dataclass(frozen=True, kw_only=True)
class VectorsSpec(JobSpec):
    source: SourceConfig = SourceConfig()
    groups: GroupsConfig = GroupsConfig()

    def validate(self) -> None:
        super().validate()
        if not self.source.runs:
            raise BadInput("source.runs is required: the steer runs to read (--from RUN, "
                           "repeatable)")
        for contrast in self.groups.contrasts:
            left, sep, right = contrast.partition(":")
            if not sep or not left or not right:
                raise BadInput(f"groups.contrasts (--contrast) {contrast!r} must look like "
                               "A:B (two group names)")
        if self.groups.pca < 0:
            raise BadInput(f"groups.pca (--pca) must be >= 0, got {self.groups.pca}")
        if not self.groups.by:
            raise BadInput("groups.by (--group-by) must name a results column")

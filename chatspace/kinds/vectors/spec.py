"""The vectors kind's spec: which steer runs to read (``[source]``) and what to compute from
their captures (``[groups]``), plus the shared ``[run]`` and ``[slurm]`` tables."""

from __future__ import annotations

from chatspace.errors import BadInput
from chatspace.specs import JobSpec, Section, option


class SourceConfig(Section):
    runs: list[str] = option([], "A finished steer run with captures (id or directory); "
                                 "repeatable.", flag="--from-run|--from")
    layers: list[int] | None = option(None, "Layers to use, e.g. 8,12 (default: every "
                                            "captured one).")
    judged_by: str | None = option(None, "A finished judge run of these generations: only "
                                         "those --where keeps are read.")
    where: str | None = option(None, "A SQL predicate over the results columns and, with "
                                     "--judged-by, the judgment's (score, label, verdict), "
                                     "e.g. \"score >= 3\".")
    min_count: int = option(0, "Leave out groups with fewer generations than this (the "
                               "manifest lists them).", ge=0)

    def check(self) -> None:
        if not self.runs:
            raise BadInput("source.runs is required: the steer runs to read (--from RUN, "
                           "repeatable)")
        if self.where is not None and (not self.where.strip() or ";" in self.where):
            raise BadInput(f"source.where (--where) {self.where!r} must be one SQL expression "
                           "(no ';')")


class GroupsConfig(Section):
    by: str = option("persona", "Results column whose values are the groups (persona, "
                                "category, point, prompt_index, …).", flag="--group-by",
                     min_length=1)
    contrasts: list[str] = option([], "A:B: the mean of group A minus that of group B "
                                      "(repeatable).", flag="--contrast")
    baseline: str | None = option(None, "Every other group against this one.")
    pca: int = option(0, "Top K principal components of the group means (0: none).", ge=0)
    normalize: bool = option(False, "Scale mean and contrast vectors to unit norm.")
    percentiles: list[float] = option([], "Record these percentiles of the generations' "
                                          "projections on each vector, e.g. 1,5,25,50 (a "
                                          "steer cap's min = \"p25\").")

    def check(self) -> None:
        for contrast in self.contrasts:
            left, sep, right = contrast.partition(":")
            if not sep or not left or not right:
                raise BadInput(f"groups.contrasts (--contrast) {contrast!r} must look like "
                               "A:B (two group names)")
        for q in self.percentiles:
            if not 0 <= q <= 100:
                raise BadInput(f"groups.percentiles (--percentiles) {q:g} is not in [0, 100]")

    def percentile_names(self) -> list[str]:
        """``p25`` for 25, ``p2.5`` for 2.5."""
        return [f"p{int(q) if float(q).is_integer() else q}" for q in self.percentiles]

    def pairs(self) -> list[tuple[str, str]]:
        return [tuple(c.split(":", 1)) for c in self.contrasts]  # type: ignore[misc]


class VectorsSpec(JobSpec):
    source: SourceConfig
    groups: GroupsConfig = GroupsConfig()

    def work_dict(self) -> dict:
        out = super().work_dict()
        for key, unset in (("judged_by", None), ("where", None), ("min_count", 0)):
            if out["source"][key] == unset:  # later keys: runs planned before keep their hash
                del out["source"][key]
        if not out["groups"]["percentiles"]:  # likewise
            del out["groups"]["percentiles"]
        return out

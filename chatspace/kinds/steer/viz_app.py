"""The Streamlit app of the persona experiments (`chatspace viz`): pick a steer run, filter
categories, and look at mean entropy, top-k mass and thinking length per category and
steering point (box plots, and the summary statistics of each metric: count, mean, std, min,
quartiles, max), at the judges' scores of its generations when judge runs judged them (a
Judgments tab: score counts per group, each generation's latest judgment), or at the raw
rows. Reads the run's files under $CHATSPACE_ROOT in place."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from chatspace.kinds.judge.kind import JudgeKind
from chatspace.kinds.steer.kind import SteerKind
from chatspace.kinds.steer.report import METRIC_VIEWS, PART_NAMES, steer_results
from chatspace.results.catalog import Catalog, run_row
from chatspace.runs.files import default_root

STEER = {"steer": SteerKind()}  # the runs this app lists
ID_COLUMNS = ["point", "scale", "persona", "category", "prompt_index", "rep"]


@st.cache_data(show_spinner=False, ttl=30)  # a running sweep keeps adding rows
def load(root: str, run_id: str) -> pd.DataFrame:
    files = Catalog(Path(root), STEER, [run_id]).runs[0]
    return steer_results(files).drop_columns(["output_token_ids"]).to_pandas()


@st.cache_data(show_spinner=False, ttl=30)
def judged(root: str, run_id: str) -> pd.DataFrame:
    """The latest judgment of each generation of `run_id` (id, score, label, verdict, judge
    run), from every judge run under the root that judged it."""
    frames = []
    for files in Catalog(Path(root), {"judge": JudgeKind()}).of_kind("judge"):
        if run_id in files.run.plan.details["sources"]:
            for path in files.files("judgments"):
                table = pd.read_parquet(path, columns=["steer_run_id", "id", "score", "label",
                                                       "verdict", "run_id", "created_at"])
                frames.append(table[table["steer_run_id"] == run_id])
    if not frames:
        return pd.DataFrame()
    latest = pd.concat(frames).sort_values(["created_at", "run_id"]).groupby("id").tail(1)
    return latest.rename(columns={"run_id": "judge_run_id"}).drop(columns="created_at")


def metric_chart(frame: pd.DataFrame, view: str, by: str) -> alt.Chart:
    columns = METRIC_VIEWS[view]
    parts = {c: PART_NAMES[i] if len(columns) > 1 else view for i, c in enumerate(columns)}
    long = frame.melt(id_vars=[by], value_vars=list(columns), var_name="part",
                      value_name=view).dropna(subset=[view])
    long["part"] = long["part"].map(parts)
    return alt.Chart(long).mark_boxplot().encode(
        x=alt.X(f"{by}:N", title=by), y=alt.Y(f"{view}:Q", title=view),
        color=alt.Color("part:N"), xOffset="part:N")


def judgments_tab(frame: pd.DataFrame, by: str) -> None:
    """Score counts per group, and each judged generation with its latest judgment."""
    counts = frame.dropna(subset=["score"]).groupby([by, "score"]).size().reset_index(
        name="generations")
    st.altair_chart(alt.Chart(counts).mark_bar().encode(
        x=alt.X(f"{by}:N", title=by), y=alt.Y("generations:Q"), color=alt.Color("score:O"),
        xOffset="score:O"), width="stretch")
    st.dataframe(frame[["id", *ID_COLUMNS, "score", "label", "verdict", "judge_run_id",
                        "output_text"]], hide_index=True)


def summary_statistics(frame: pd.DataFrame, by: str, column: str) -> pd.DataFrame:
    """Count, mean, std, min, quartiles and max of `column` per value of `by`."""
    return frame.groupby(by)[column].describe()


def main() -> None:
    st.set_page_config(page_title="chatspace viz", layout="wide")
    root = str(default_root())
    runs = [run_row(f) for f in Catalog(Path(root), STEER).of_kind("steer")]
    st.sidebar.title("chatspace")
    if not runs:
        st.info(f"No steer runs under {root}.")
        return
    labels = {r["run_id"]: f"{r['name']} · {r['run_id']} ({r['state']})" for r in runs}
    run_id = st.sidebar.selectbox("Run", list(labels), index=len(labels) - 1,
                                  format_func=labels.get)
    frame = load(root, run_id)
    if frame.empty:
        st.warning(f"Run {run_id} has no finished tasks yet.")
        return
    categories = sorted(frame["category"].dropna().unique())
    chosen = st.sidebar.multiselect("Categories", categories, default=categories)
    frame = frame[frame["category"].isin(chosen)]
    by = st.sidebar.radio("Group by", ["category", "point"], horizontal=True)
    st.caption(f"{len(frame)} generations of run {run_id}")
    scores = judged(root, run_id)
    names = [*(v.capitalize() for v in METRIC_VIEWS), *(["Judgments"] if len(scores) else []),
             "Raw data"]
    *metric_tabs, raw_tab = st.tabs(names)
    if len(scores):
        with metric_tabs.pop():
            judgments_tab(frame.merge(scores, on="id"), by)
    for tab, view in zip(metric_tabs, METRIC_VIEWS, strict=True):
        with tab:
            st.altair_chart(metric_chart(frame, view, by), width="stretch")
            for column in METRIC_VIEWS[view]:  # the persona runner's summary statistics
                st.caption(f"{column} per {by}")
                st.dataframe(summary_statistics(frame, by, column))
    with raw_tab:
        default = [*ID_COLUMNS, "output_text", "avg_entropy", "avg_top_k_mass",
                   "thinking_tokens"]
        columns = st.multiselect("Columns", list(frame.columns), default=default)
        st.dataframe(frame[columns], hide_index=True)


main()

"""The local judge: the judge model on the task's node through the steering runtime (vLLM or
HF), greedy, no network. Each part's rows are generated together; rows whose reply gives no
score are asked once more together (their reply and the rubric's reminder), as the OpenAI
judge asks."""

from __future__ import annotations

from typing import Any

from chatspace.kinds.judge.openai_judge import judgment
from chatspace.kinds.judge.rubric import Rubric
from chatspace.steering.model import SteerModel
from chatspace.steering.outputs import Sampling


def local_model(model: dict[str, Any]) -> SteerModel:
    """The plan's local judge model, loaded as a steer run loads its model."""
    return SteerModel(model["path"], model["runtime"], dtype=model["dtype"], seed=0) \
        if model["runtime"] == "vllm" else SteerModel(model["path"], "hf", dtype=model["dtype"])


def judge_rows(model: SteerModel, rubric: Rubric,
               rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One judgment per row, in order."""
    sampling = Sampling(max_tokens=rubric.max_tokens, temperature=0.0)
    conversations = [list(row["messages"]) for row in rows]
    replies: list[Any] = [None] * len(rows)
    used = [[0, 0] for _ in rows]
    asked = [0] * len(rows)
    pending = list(range(len(rows)))
    for _ in (1, 2):
        if not pending:
            break
        outs = model.generate_sync([conversations[i] for i in pending], sampling)
        for i, out in zip(pending, outs, strict=True):
            replies[i], asked[i] = out, asked[i] + 1
            used[i][0] += len(out.prompt_token_ids)
            used[i][1] += len(out.token_ids)
        pending = [i for i in pending if rubric.score(replies[i].text) is None]
        for i in pending:
            conversations[i] += [{"role": "assistant", "content": replies[i].text},
                                 {"role": "user", "content": rubric.reminder()}]
    return [judgment(rubric, out.text, "unparsed" if i in pending else "scored",
                     out.finish_reason or "", asked[i], used[i][0], used[i][1], 0.0)
            for i, out in enumerate(replies)]

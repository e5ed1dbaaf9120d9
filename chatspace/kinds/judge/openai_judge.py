"""The OpenAI judge: chat completions for each row of a part, all in flight together within the
task's share of the rate limits (`chatspace.kinds.openai_api`). A reply that gives no score by
the rubric's rule is asked once more (the reply and a reminder of the format), then recorded
as ``unparsed`` with its text; a content-filter stop is ``refused``; a 400 for the row is
``rejected``. Every judgment is journaled as it arrives, so a killed task resumes without
asking for a row twice."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from chatspace.kinds.judge.rubric import Rubric
from chatspace.kinds.judge.schema import Journal
from chatspace.kinds.openai_api import Malformed, Rejected, Sender, async_client, sharing_tasks
from chatspace.runs.record import Run


class Judge(Sender):
    """Sends one task's judge requests."""

    def __init__(self, run: Run, client: Any, rubric: Rubric):
        model = run.plan.details["model"]
        super().__init__(model["label"], run.spec.judge, sharing_tasks(run))
        self.client, self.model, self.rubric = client, model, rubric

    async def _call(self, messages: list[dict[str, str]]) -> tuple[tuple[str, str, Any], Any]:
        rubric = self.rubric
        extra = {"response_format": rubric.response_format()} \
            if rubric.response_format() else {}
        raw = await self.client.chat.completions.with_raw_response.create(
            model=self.model["label"], messages=messages, temperature=rubric.temperature,
            max_tokens=rubric.max_tokens, **extra)
        body = raw.parse()
        if not getattr(body, "choices", None):
            raise Malformed("a reply without choices")
        choice = body.choices[0]
        usage = getattr(body, "usage", None)
        self.stats.tokens += int(getattr(usage, "prompt_tokens", 0) or 0)
        self.stats.output_tokens += int(getattr(usage, "completion_tokens", 0) or 0)
        return (choice.message.content or "", choice.finish_reason or "", usage), raw.headers

    async def judge(self, row: dict[str, Any]) -> dict[str, Any]:
        """One generation's judgment (the verdict, score, reply and what it cost)."""
        messages, used = list(row["messages"]), {"prompt": 0, "completion": 0}
        reply, finish, verdict, asked = "", "", "unparsed", 0
        # the rate limiter counts a request's prompt and its max_tokens, as OpenAI's does
        tokens = row["input_tokens"] + self.rubric.max_tokens
        while asked < 2:
            asked += 1
            try:
                reply, finish, usage = await self.send(lambda m=messages: self._call(m),
                                                       tokens, f"row {row['id']}")
            except Rejected as exc:
                reply, finish, verdict = str(exc), "", "rejected"
                break
            used["prompt"] += int(getattr(usage, "prompt_tokens", 0) or 0)
            used["completion"] += int(getattr(usage, "completion_tokens", 0) or 0)
            if finish == "content_filter":
                verdict = "refused"
                break
            if self.rubric.score(reply) is not None:
                verdict = "scored"
                break
            messages += [{"role": "assistant", "content": reply},
                         {"role": "user", "content": self.rubric.reminder()}]
            tokens += self.rubric.max_tokens + len(self.rubric.reminder()) // 3
        prices = (self.model["input_price"] or 0.0, self.model["output_price"] or 0.0)
        return judgment(self.rubric, reply, verdict, finish, asked, used["prompt"],
                        used["completion"],
                        (used["prompt"] * prices[0] + used["completion"] * prices[1]) / 1e6)


def judgment(rubric: Rubric, reply: str, verdict: str, finish: str, attempts: int,
             prompt_tokens: int, completion_tokens: int, cost: float) -> dict[str, Any]:
    """A judgment's fields (the journal's line, and the output row without its keys)."""
    score = rubric.score(reply) if verdict == "scored" else None
    return {"score": score, "label": rubric.labels.get(score) if score is not None else None,
            "verdict": verdict, "raw_reply": reply, "finish_reason": finish,
            "attempts": attempts, "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens, "cost_usd": cost}


def judge_parts(run: Run, rubric: Rubric, journal: Journal,
                parts: list[tuple[int, list[dict[str, Any]]]]) -> Iterator[dict[str, Any]]:
    """For each part (its first plan row and its rows), yield its stats once every row of it
    has a judgment in `journal` (journaled rows are not asked again)."""
    with asyncio.Runner() as loop:
        client = async_client(run.plan.details["model"])
        judge = loop.run(_make(run, client, rubric))
        try:
            for start, rows in parts:
                before = (judge.stats.requests, judge.stats.retries, judge.stats.tokens,
                          judge.stats.output_tokens)
                loop.run(_part(judge, journal, start, rows))
                yield {"requests": judge.stats.requests - before[0],
                       "retries": judge.stats.retries - before[1],
                       "tokens": judge.stats.tokens - before[2],
                       "output_tokens": judge.stats.output_tokens - before[3]}
        finally:
            loop.run(client.close())


async def _make(run: Run, client: Any, rubric: Rubric) -> Judge:
    return Judge(run, client, rubric)  # inside the loop: its semaphore belongs to it


async def _part(judge: Judge, journal: Journal, start: int, rows: list[dict[str, Any]]) -> None:
    async def one(position: int, row: dict[str, Any]) -> None:
        journal.add(position, await judge.judge(row))

    await asyncio.gather(*(one(start + i, row) for i, row in enumerate(rows)
                           if start + i not in journal.done))

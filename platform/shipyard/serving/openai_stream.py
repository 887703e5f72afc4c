"""One streamed OpenAI response: every choice's engine events, merged into server-sent events.

Per choice an opening chunk (chat: the assistant role; completions with ``echo``: the prompt's text),
then one chunk per token that brings text or log-probs, then its finish reason; then the usage chunk
when ``stream_options.include_usage`` asks, then ``data: [DONE]``. An engine error or the request's
deadline mid-stream ends it with an ``error`` event (the status line was sent long before). When the
stream ends for any reason, the client hanging up included, its jobs are cancelled in the engine.
"""

from __future__ import annotations

import asyncio
import json


def event(body: dict) -> str:
    return f"data: {json.dumps(body)}\n\n"


def error_event(exc: BaseException) -> str:
    kind = "timeout_error" if isinstance(exc, TimeoutError) else "server_error"
    return event({"error": {"message": str(exc) or type(exc).__name__, "type": kind, "param": None, "code": None}})


async def _pump(index: int, job, merged: asyncio.Queue) -> None:
    """Forward one job's events, tagged with its choice index, into the stream's queue."""
    try:
        async for kind, payload in job:
            await merged.put((index, kind, payload))
    except Exception as exc:
        await merged.put((index, "error", exc))


class ChoiceStream:
    def __init__(self, shape, jobs: list, fitted: list[list[int]], cites, tokenizer, rails=None):
        from shipyard.serving.openai_rails import StreamRails

        self.shape, self.jobs, self.fitted, self.cites, self.tokenizer = shape, jobs, fitted, cites, tokenizer
        self.rails = rails or StreamRails(None, len(jobs))
        self.merged: asyncio.Queue = asyncio.Queue()
        self.pumps = [asyncio.ensure_future(_pump(i, job, self.merged)) for i, job in enumerate(jobs)]
        self.first = None
        self.offsets = [0] * len(jobs)

    async def start(self) -> BaseException | None:
        """Wait for the first event; the error it is, if it is one (the jobs are then cancelled)."""
        self.first = await self.merged.get()
        if self.first[1] == "error":
            self.close()
            return self.first[2]
        return None

    def close(self) -> None:
        for job in self.jobs:
            job.cancel()
        for pump in self.pumps:
            pump.cancel()

    def _openings(self):
        req = self.shape.req
        for i in range(len(self.jobs)):
            text = self.tokenizer.decode(self.fitted[i // req.n]) if getattr(req, "echo", False) else None
            opening = self.shape.chunk(i, text, None)
            if i == 0 and self.cites is not None:
                opening["citations"] = self.cites
            yield event(opening)

    def _delta(self, i: int, payload) -> str | None:
        text, entry = payload
        if getattr(self.shape, "holds_text", False):
            return None
        text = self.rails.feed(i, text)
        if not text and entry is None:
            return None
        chunk = self.shape.chunk(i, text, None, entry, offset=self.offsets[i])
        self.offsets[i] += len(text)
        return event(chunk)

    def _finish(self, i: int, g):
        """A choice's last chunks: the text its output rails held back, then its finish (and extensions)."""
        holds = getattr(self.shape, "holds_text", False)
        rest, g, extra = self.rails.finish(i, g, whole=holds)
        if rest:
            yield event(self.shape.chunk(i, rest, None, offset=self.offsets[i]))
            self.offsets[i] += len(rest)
        if i == 0 and getattr(self.shape, "on_answer", None) is not None:
            self.shape.on_answer(g.text)
        yield event({**(self.shape.final_chunk(i, g) if holds else self.shape.chunk(i, "", g.finish_reason)),
                     **extra})

    async def events(self):
        from shipyard.serving.metrics import TOKENS

        done, total, item = 0, 0, self.first
        try:
            for opening in self._openings():
                yield opening
            while True:
                i, kind, payload = item
                if kind == "error":
                    yield error_event(payload)
                    break
                if kind == "done":
                    done, total = done + 1, total + payload.completion_tokens
                    for chunk in self._finish(i, payload):
                        yield chunk
                    if done == len(self.jobs):
                        if usage := usage_event(self.shape, self.fitted, total):
                            yield usage
                        break
                elif (chunk := self._delta(i, payload)) is not None:
                    yield chunk
                item = await self.merged.get()
            TOKENS.labels("prompt").inc(sum(len(ids) for ids in self.fitted))
            TOKENS.labels("completion").inc(total)
            yield "data: [DONE]\n\n"
        finally:  # done, failed, or the client went away: nothing keeps generating for nobody
            self.close()


def usage_event(shape, fitted: list[list[int]], total: int) -> str:
    if not (shape.req.stream_options and shape.req.stream_options.include_usage):
        return ""
    n_prompt = sum(len(ids) for ids in fitted)
    usage = {"prompt_tokens": n_prompt, "completion_tokens": total, "total_tokens": n_prompt + total}
    return event({**shape.chunk(0, None, None), "choices": [], "usage": usage})

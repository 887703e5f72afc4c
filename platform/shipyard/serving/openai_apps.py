"""Prompt apps served on the chat route: ``model: "<served-name>:<app>"``.

Apps: ``fewshot`` (the server's ``--app-prompt``), ``cot``, ``pal`` (programs run in
``shipyard.apps.sandbox``), ``react`` (``search``/``lookup`` over the RAG index, tenant scoped, and
``calculate``), and the document chains ``stuff``, ``refine``, ``map_reduce`` (over the request's
retrieved chunks; they need RAG). The last message is the question; earlier messages and the
conversation's memory come before every model call the app makes, after the app's own system prompt.

An app is ``shipyard.apps``' plain function run in a worker thread; each of its model calls is one
engine job submitted on the event loop, so apps share the batch, the queue, the request timeout
(over the whole app) and the metrics with plain requests, and a client that goes away cancels the
call in flight and the rest. Decoding is greedy unless the request sets ``temperature``; ``max_tokens``,
when given, bounds each call. The response is an ordinary chat completion whose content is the
answer, with ``usage`` summed over the calls and the extension field ``app``: ``{name, steps: [{kind,
content}], calls, error}``. Streamed, each step is a chunk with an empty delta and an ``app_step``
field as it happens, then the answer as one content chunk, then the finish chunk with ``app``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import threading
import time
from functools import partial

from kserve.errors import InvalidInput

from shipyard.serving.openai_errors import degraded as _degraded
from shipyard.serving.openai_errors import disconnected as _disconnected
from shipyard.serving.openai_errors import error as _error

APPS = ("fewshot", "cot", "pal", "react", "stuff", "refine", "map_reduce")
CHAINS = ("stuff", "refine", "map_reduce")
PROMPT_RESERVE = 96  # tokens a chain's own template and the question take besides its documents
MIN_ANSWER_TOKENS = 16  # below this, a call whose prompt filled the context is not made


class Cancelled(Exception):
    """The client went away; the app stops at its next model call."""


class AppStop(Exception):
    """The app cannot go on (its prompt outgrew the context); what it has so far is the answer."""


def split_model(model: str, served: list[str]) -> tuple[str, str | None]:
    """(served name, app or None): a served name is taken whole first, so names with ':' still work."""
    if model in served:
        return model, None
    base, sep, app = model.rpartition(":")
    return (base, app) if sep and base in served else (model, None)


class AppCalls:
    """The model calls of one app request, made from its worker thread on the loop's engine."""

    def __init__(self, llm, loop, req, context: list[dict], timeout_s: float, adapter: str | None, rails=None):
        self.llm, self.loop, self.req, self.context, self.adapter = llm, loop, req, list(context), adapter
        self.rails = rails if rails is not None and rails.runs_at("output") else None
        self.found: list = []  # what the output rails found in the steps
        self.deadline = time.monotonic() + timeout_s
        self.cancelled, self.lock, self.futures = threading.Event(), threading.Lock(), set()
        self.prompt_tokens = self.completion_tokens = self.calls = 0
        self.steps: list = []
        self.events: asyncio.Queue = asyncio.Queue()

    def on_step(self, step) -> None:  # worker thread
        if self.rails is not None:  # the trace is model text too: redacted, a blocked step withheld
            from shipyard.apps.guardrails import REMOVED

            got = self.rails.check(step.content, "output")
            self.found.extend(got.findings)
            step = dataclasses.replace(step, content=REMOVED if got.blocked else got.text)
        self.steps.append(step)
        self.loop.call_soon_threadsafe(self.events.put_nowait, ("step", step))

    def cancel(self) -> None:  # loop thread
        self.cancelled.set()
        with self.lock:
            for fut in list(self.futures):
                fut.cancel()

    def chat(self, messages: list[dict], max_tokens: int, stop: list[str]):
        """One model call (``apps.reasoning.Chat``); raises Cancelled, TimeoutError, QueueFull, AppStop."""
        from shipyard.apps.reasoning import Reply

        if self.cancelled.is_set():
            raise Cancelled()
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the app did not finish within the request timeout")
        ids, max_tokens = self._fit(messages, self.req.max_tokens or max_tokens)
        params = dataclasses.replace(self._params(max_tokens), stop=tuple(stop))
        fut = asyncio.run_coroutine_threadsafe(self._generate(ids, params, remaining), self.loop)
        with self.lock:
            self.futures.add(fut)
        try:
            gen = fut.result()
        except concurrent.futures.CancelledError:
            raise Cancelled() from None
        finally:
            with self.lock:
                self.futures.discard(fut)
        with self.lock:
            self.calls += 1
            self.prompt_tokens += len(ids)
            self.completion_tokens += gen.completion_tokens
        return Reply(gen.text, len(ids), gen.completion_tokens)

    def _params(self, max_tokens: int):
        params = self.req.params(max_tokens, 0, self.adapter)
        return params if "temperature" in self.req.model_fields_set else dataclasses.replace(params, temperature=0.0)

    async def _generate(self, ids, params, timeout_s: float):
        return await self.llm.submit(ids, params, timeout_s).result()

    def _fit(self, messages: list[dict], max_tokens: int) -> tuple[list[int], int]:
        """The call's token ids and max_tokens: the oldest context turns dropped, then max_tokens cut, until
        it fits the model's context; AppStop when not even ``MIN_ANSWER_TOKENS`` would."""
        llm, context = self.llm, list(self.context)
        while True:
            lead = [m for m in messages[:1] if m["role"] == "system"]
            ids = llm.encode(llm.chat_prompt([*lead, *context, *messages[len(lead):]]))
            room = llm.context_length - len(ids)
            if room >= max_tokens or (not context and room >= MIN_ANSWER_TOKENS):
                return llm.check_fits(ids, min(max_tokens, room)), min(max_tokens, room)
            if not context:
                raise AppStop(f"the app's prompt ({len(ids)} tokens) outgrew the model's context "
                              f"({llm.context_length})")
            context = context[2:] if len(context) > 1 else []

    def summary(self, name: str, error: str | None) -> dict:
        return {"name": name, "steps": [{"kind": s.kind, "content": s.content} for s in self.steps],
                "calls": self.calls, "error": error}


def build(app: str, opts, question: str, docs: list[tuple[str, str]] | None, search, prompt, examples=None):
    """The app as ``fn(chat, on_step) -> AppAnswer`` (``shipyard.apps``' functions, options bound)."""
    from shipyard.apps import chains, reasoning

    if app == "fewshot":
        pool = examples if opts.select == "similar" else None  # first: the prompt's own examples, as registered
        return lambda chat, on_step: reasoning.fewshot(chat, question, prompt, opts.k, on_step=on_step,
                                                       pool=pool, select=opts.select)
    if app == "cot":
        return lambda chat, on_step: reasoning.cot(chat, question, on_step=on_step)
    if app == "pal":
        return lambda chat, on_step: reasoning.pal(chat, question, retries=opts.retries, on_step=on_step)
    if app == "react":
        tools = reasoning.Tools(search).as_dict()
        return lambda chat, on_step: reasoning.react(chat, question, tools, opts.max_steps, on_step=on_step)
    return partial(_chain, chains.CHAINS[app], question, docs)


def _chain(fn, question, docs, chat, on_step):
    return fn(chat, question, docs, on_step=on_step)


def chain_docs(llm, chunks: list[dict], app: str, context_tokens: int, max_tokens: int) -> list[tuple[str, str]]:
    """The retrieved chunks as a chain's documents, each cut to the tokens it may fill (``stuff`` puts them
    all in one prompt; ``refine`` and ``map_reduce`` one at a time)."""
    from shipyard.features.rag_prompt import first_tokens

    budget = min(llm.context_length, context_tokens) - max_tokens - PROMPT_RESERVE
    each = budget // max(1, len(chunks)) if app == "stuff" else budget
    if each < MIN_ANSWER_TOKENS:
        raise InvalidInput(f"rag: the model's context leaves no room for documents ({each} tokens each)")
    return [(c["source"], c["text"] if llm.count_tokens(c["text"]) <= each else first_tokens(c["text"], each,
                                                                                             llm.count_tokens))
            for c in chunks]


def citation(n: int, chunk: dict) -> dict:
    return {"index": n, "chunk_id": chunk["chunk_id"], "source": chunk["source"], "doc_id": chunk.get("doc_id"),
            "score": chunk["score"], "text": chunk["text"], "truncated": False}


class AppRoute:
    """The chat route's answer for a ``NAME:APP`` model: checks, retrieval, the run, the response."""

    def __init__(self, endpoints, prompt=None, memory=None, examples=None):
        self.ep, self.prompt, self.memory = endpoints, prompt, memory
        if prompt is not None and examples is None:
            from shipyard.apps.examples import ExamplePool

            examples = ExamplePool(prompt.examples)
        self.examples = examples  # what select similar picks from
        limits = endpoints.limits
        self.pool = concurrent.futures.ThreadPoolExecutor(limits.max_batch_size, thread_name_prefix="shipyard-app")
        self.capacity, self.active = limits.max_batch_size + limits.max_queue, 0

    def available(self) -> list[str]:
        """The apps this server can run: fewshot needs --app-prompt, the chains need --rag-url."""
        return [a for a in APPS if (a != "fewshot" or self.prompt is not None) and (a not in CHAINS or self.ep.rag)]

    def refuse(self, req, app: str) -> str | None:
        """Why this request cannot run ``app`` (a 400's message), or None."""
        if app not in APPS:
            return f"model: no app {app!r}; apps are {', '.join(APPS)} (as NAME:APP)"
        if app == "fewshot" and self.prompt is None:
            return "model: the fewshot app needs a prompt (start the server with --app-prompt)"
        if app in CHAINS and (self.ep.rag is None or (req.rag is not None and not req.rag.enabled)):
            return f"model: the {app} app answers over retrieved documents; this request has no RAG"
        refused = [f for f in ("tools", "response_format", "logprobs") if getattr(req, f)]
        if req.n > 1:
            refused.append("n")
        if refused:
            return f"{refused[0]}: not with an app model (an app answers once, in text)"
        if req.messages[-1].role != "user":
            return "messages: an app answers the last message, which must be the user's"
        return None

    async def answer(self, req, app: str, request, tenant: str, history: list[dict]):
        from shipyard.serving.llm import QueueFull

        if self.active >= self.capacity:
            raise QueueFull(f"{self.active} app requests are running or waiting; try again later")
        question = req.messages[-1].as_template_input()["content"]
        context = [*history, *(m.as_template_input() for m in req.messages[:-1])]
        got = await self._sources(req, app, question, tenant, request.headers)
        if not isinstance(got, tuple):
            return got
        text, docs, cites, headers, search = got
        adapter = None if req.model.rpartition(":")[0] == self.ep.llm.name else req.model.rpartition(":")[0]
        calls = AppCalls(self.ep.llm, asyncio.get_running_loop(), req, context,
                         self.ep.limits.request_timeout_s, adapter, self.ep.rails)
        fn = build(app, req.app or _default_options(), text, docs, search, self.prompt, self.examples)
        self.active += 1
        task = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(
            self.pool, lambda: fn(calls.chat, calls.on_step)))
        task.add_done_callback(lambda _: setattr(self, "active", self.active - 1))
        task.add_done_callback(lambda _: calls.events.put_nowait(("done", None)))
        remember = partial(self._remember, req.conversation, tenant, question) if req.conversation else None
        shaped = AppResponse(req, app, calls, task, cites, remember, getattr(request.state, "rails_found", []))
        if req.stream:
            return await shaped.stream(headers)
        return await shaped.collect(request, headers)

    def _remember(self, conversation: str, tenant: str, question: str, answer: str) -> None:
        if answer:
            self.memory.remember(tenant, conversation, question, answer)

    async def _sources(self, req, app: str, question: str, tenant: str, headers):
        """(question text, chain docs, citations, headers, react's search) or an error response."""
        ep = self.ep
        rag_on = ep.rag is not None and (req.rag is None or req.rag.enabled)
        if not rag_on:
            return question, None, None, {}, None
        top_k, filters = (req.rag and req.rag.top_k) or ep.rag.settings.top_k, req.rag.filters if req.rag else {}
        if app == "react":
            cites: list[dict] = []
            return question, None, cites, {}, self._searcher(tenant, top_k, filters, cites)
        if app not in CHAINS:
            text, cites, extra = await ep._retrieve(req, question, self._render, req.max_tokens or 256, headers)
            return (text, None, cites, extra, None) if text is not None else extra
        return await self._chain_sources(req, app, question, tenant, top_k, filters)

    async def _chain_sources(self, req, app, question, tenant, top_k, filters):
        from shipyard.serving.rag import Rejected

        ep = self.ep
        try:
            found = await ep.rag.retrieve(question, tenant, top_k, filters)
        except Rejected as exc:
            return _error(exc.status, str(exc), f"rag.{exc.param}" if exc.param else "rag")
        except Exception as exc:  # sidecar down: the chain has no documents and says so
            return question, [], None, _degraded(exc), None
        docs = await asyncio.to_thread(chain_docs, ep.llm, found["chunks"], app, ep.rag.settings.context_tokens,
                                       req.max_tokens or 128)
        cites = [citation(n, c) for n, c in enumerate(found["chunks"], 1)]
        return question, docs, cites, {"X-Shipyard-RAG": "used",
                                       "X-Shipyard-RAG-Index": f"{found['index']}@{found['version']}"}, None

    def _render(self, text: str) -> str:
        return self.ep.llm.chat_prompt([{"role": "user", "content": text}])

    def _searcher(self, tenant: str, top_k: int, filters: dict, cites: list[dict]):
        """react's ``search`` tool: the sidecar asked from the app's thread; what it returns is cited."""
        rag, loop = self.ep.rag, asyncio.get_running_loop()

        def search(query: str) -> list[tuple[str, str]]:
            found = asyncio.run_coroutine_threadsafe(rag.retrieve(query, tenant, top_k, filters), loop).result(
                rag.settings.timeout_s + 1)
            for chunk in found["chunks"]:
                cites.append(citation(len(cites) + 1, chunk))
            return [(c["source"], c["text"]) for c in found["chunks"]]

        return search


def _default_options():
    from shipyard.serving.openai_schema import AppOptions

    return AppOptions()


class AppResponse:
    """One app run's chat completion, whole or streamed (steps as they happen, then the answer)."""

    def __init__(self, req, app: str, calls: AppCalls, task, cites, remember, found=()):
        import uuid

        self.req, self.app, self.calls, self.task, self.cites, self.remember = req, app, calls, task, cites, remember
        self.found, self.finish = list(found), "stop"  # the guardrails' findings; content_filter when one blocked
        self.rid, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def outcome(self) -> tuple[str, str | None]:
        """(answer, error) of the finished run; raises what the client must get as a status instead."""
        exc = self.task.exception()
        if isinstance(exc, AppStop):
            return "", str(exc)
        if exc is not None:
            raise exc
        got = self.task.result()
        answer = got.answer
        if self.calls.rails is not None:
            from shipyard.serving.metrics import count_rails

            checked = self.calls.rails.check(answer, "output")
            answer, self.finish = checked.text, "content_filter" if checked.blocked else "stop"
            self.found.extend([*self.calls.found, *checked.findings])
            count_rails([*self.calls.found, *checked.findings])
        if self.remember is not None and got.error is None:
            self.remember(answer)
        return answer, got.error

    def extension(self, error: str | None) -> dict:
        from shipyard.serving.openai_rails import extension

        extra = {"app": self.calls.summary(self.app, error), **extension(self.found)}
        return {**extra, "citations": self.cites} if self.cites is not None else extra

    def usage(self) -> dict:
        from shipyard.serving.metrics import TOKENS

        c = self.calls
        TOKENS.labels("prompt").inc(c.prompt_tokens)
        TOKENS.labels("completion").inc(c.completion_tokens)
        return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                "total_tokens": c.prompt_tokens + c.completion_tokens}

    async def collect(self, request, headers: dict):
        from fastapi.responses import JSONResponse
        from openai.types.chat import ChatCompletion

        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({self.task, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not self.task.done():
            self.calls.cancel()
            return _error(499, "the client closed the request", None, "cancelled")
        try:
            answer, error = self.outcome()
        except TimeoutError as exc:
            return _error(504, str(exc), None, "timeout_error")
        body = ChatCompletion(id=self.rid, object="chat.completion", created=self.created, model=self.req.model,
                              usage=self.usage(), choices=[{"index": 0, "finish_reason": self.finish, "message": {
                                  "role": "assistant", "content": answer}}]).model_dump(exclude_none=True)
        return JSONResponse({**body, **self.extension(error)}, headers=headers)

    def chunk(self, delta: dict, finish: str | None = None, **extra) -> str:
        from shipyard.serving.openai_stream import event

        return event({"id": self.rid, "object": "chat.completion.chunk", "created": self.created,
                      "model": self.req.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                      **extra})

    async def stream(self, headers: dict):
        """Waits for the first step (or the end) first, so an app that fails at once gets its status code."""
        from fastapi.responses import StreamingResponse

        first = await self.calls.events.get()
        if first[0] == "done" and isinstance(self.task.exception(), TimeoutError):
            return _error(504, str(self.task.exception()), None, "timeout_error")
        if first[0] == "done" and self.task.exception() is not None and not isinstance(self.task.exception(),
                                                                                        AppStop):
            raise self.task.exception()
        return StreamingResponse(self._events(first), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers})

    async def _events(self, item):
        from shipyard.serving.openai_stream import error_event, event

        try:
            yield self.chunk({"role": "assistant", "content": ""})
            while item[0] == "step":
                yield self.chunk({}, app_step={"kind": item[1].kind, "content": item[1].content})
                item = await self.calls.events.get()
            try:
                answer, error = self.outcome()
            except Exception as exc:
                yield error_event(exc)
                return
            yield self.chunk({"content": answer})
            yield self.chunk({}, self.finish, **self.extension(error))
            usage = self.usage()
            if self.req.stream_options and self.req.stream_options.include_usage:
                yield event({"id": self.rid, "object": "chat.completion.chunk", "created": self.created,
                             "model": self.req.model, "choices": [], "usage": usage})
            yield "data: [DONE]\n\n"
        finally:
            if not self.task.done():
                self.calls.cancel()

"""OpenAI-compatible routes (``/openai/v1``) mounted on KServe's own FastAPI app.

``OpenAIEndpoints`` holds one served model's routes: both generation routes share ``_answer`` (fit the
prompt, retrieve, fit again with the sources, submit every choice to the engine, then stream or
collect); what differs between chat and text completions is a shape (``openai_shapes``). Request
bodies are ``openai_schema``'s.

Failure is the client's (4xx, OpenAI error body) or documented (429 queue full, 503 not ready or the
engine unavailable, 504 past ``--request-timeout-s``); anything else is a bug, answered 500 with an error
body and logged, without closing the connection. Prompts are rendered and tokenized off the event loop
(a request under ``INLINE_BODY_BYTES`` on it: the thread hop would cost more than the work). A request's
choices are engine jobs: they count against the queue and the timeout whether streamed or not, and a
client that goes away cancels them (a stream when its connection closes, a plain request within
``DISCONNECT_POLL_S``).

Why not KServe's OpenAI layer: in KServe 0.21 ``kserve.protocol.rest.openai`` imports vLLM's
protocol types, and without vLLM (656 MB, pinned to another torch) the routes silently do not
register. This runtime serves the same paths with its own engine and builds every response with the
``openai`` package's own pydantic models, so the official client parses them.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from kserve.errors import InvalidInput

from shipyard.serving.engine import EngineUnavailable
from shipyard.serving.llm import QueueFull, ShipyardLLM
from shipyard.serving.openai_apps import APPS, AppRoute, split_model
from shipyard.serving.openai_errors import degraded as _degraded
from shipyard.serving.openai_errors import disconnected as _disconnected
from shipyard.serving.openai_errors import error as _error
from shipyard.serving.openai_schema import ChatMessage, ChatRequest, CompletionRequest
from shipyard.serving.openai_shapes import ChatShape, CompletionShape
from shipyard.serving.options import Limits
from shipyard.serving.params import Generation
from shipyard.serving.rag import RagClient

INLINE_BODY_BYTES = 8192  # a smaller request renders and tokenizes on the loop (~0.1 ms); a thread hop costs more
log = logging.getLogger("shipyard.serving")


async def validation_error_handler(request: Request, exc: RequestValidationError):
    """Bad requests to the OpenAI routes get 400 with an OpenAI error body (FastAPI would say 422)."""
    if not request.url.path.startswith("/openai/"):
        from fastapi.exception_handlers import request_validation_exception_handler

        return await request_validation_exception_handler(request, exc)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return _error(400, f"request body is not valid JSON: {first.get('msg')}")
    param = ".".join(loc) or None
    detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
                       for e in exc.errors()[:5])
    return _error(400, detail[:2000], param)


class OpenAIEndpoints:
    """The ``/openai/v1`` routes for one served model; with ``rag``, answers cite retrieved chunks; ``prompt``
    (a ``PromptSpec``) is the fewshot app's, ``examples`` (an ``ExamplePool``) its examples; ``memory`` (a
    ``ConversationMemory``) keeps conversations."""

    def __init__(self, llm: ShipyardLLM, limits: Limits | None = None, rag: RagClient | None = None,
                 prompt=None, memory=None, rails=None, examples=None):
        self.llm, self.limits, self.rag, self.memory, self.rails = llm, limits or Limits(), rag, memory, rails
        self.apps = AppRoute(self, prompt, memory, examples)

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/openai/v1")
        router.add_api_route("/models", self.list_models, methods=["GET"])
        router.add_api_route("/chat/completions", self.chat, methods=["POST"])
        router.add_api_route("/completions", self.completions, methods=["POST"])
        return router

    async def list_models(self):
        from openai.types import Model

        names = [*self.llm.served_names, *(f"{self.llm.name}:{app}" for app in self.apps.available())]
        return {"object": "list", "data": [Model(id=name, created=0, object="model", owned_by="shipyard").model_dump()
                                           for name in names]}

    async def chat(self, req: ChatRequest, request: Request):
        return await self._guarded("chat", lambda: self._railed(req, request, self._chat))

    async def _railed(self, req, request: Request, answer):
        """The input rails first: a blocked request is a 400, a redacted one goes on rewritten."""
        from shipyard.serving.openai_rails import guard_input, refuse_logprobs, runs

        if (err := refuse_logprobs(self.rails, req)) is not None:
            return err
        req, found = await asyncio.to_thread(guard_input, self.rails, req) if runs(self.rails, "input") else (req, [])
        if req is None:
            return found
        request.state.rails_found = found
        return await answer(req, request)

    async def _chat(self, req: ChatRequest, request: Request):
        """A plain chat completion, or an app's (``NAME:APP``); either remembers its conversation."""
        from shipyard.serving.rag import Rejected, tenant_of

        _, app = split_model(req.model, self.llm.served_names)
        if app is None and req.app is not None:
            return _error(400, "app: options for an app model (NAME:APP)", "app")
        if app is not None and app not in APPS:
            return _error(404, self.apps.refuse(req, app), "model", "not_found_error")
        if app is not None and (why := self.apps.refuse(req, app)) is not None:
            return _error(400, why, why.split(":")[0])
        if req.conversation is not None and self.memory is None:
            return _error(400, "conversation: this server keeps no conversation memory (--memory-turns 0)",
                          "conversation")
        try:
            tenant = tenant_of(req.rag, request.headers) if (app or req.conversation) else None
        except Rejected as exc:
            return _error(exc.status, str(exc), "rag.tenant")
        history = self.memory.history(tenant, req.conversation) if req.conversation else []
        if app is not None:
            if not self.llm.ready:
                return _error(503, "model is not ready", None, "server_error")
            return await self.apps.answer(req, app, request, tenant, history)
        shape = ChatShape(req.model_copy(update={"messages": [*(ChatMessage(**m) for m in history), *req.messages]})
                          if history else req, self.llm)
        if req.conversation:
            question = req.messages[-1].as_template_input()["content"]
            shape.on_answer = lambda answer: self.memory.remember(tenant, req.conversation, question, answer)
        return await self._answer(shape, request)

    async def completions(self, req: CompletionRequest, request: Request):
        return await self._guarded("completions", lambda: self._railed(
            req, request, lambda r, http: self._answer(CompletionShape(r, self.llm), http)))

    async def _guarded(self, route: str, answer):
        """The route's answer; a bug becomes a logged 500 with an OpenAI body (the connection stays open)."""
        from shipyard.serving.metrics import LATENCY, REQUESTS

        started = time.perf_counter()
        try:
            response = await answer()
        except InvalidInput as exc:
            response = _error(400, str(exc))
        except QueueFull as exc:
            response = _error(429, str(exc), None, "rate_limit_error")
        except EngineUnavailable as exc:
            response = _error(503, str(exc), None, "server_error")
        except Exception as exc:
            log.exception("%s failed", route)
            response = _error(500, f"internal error: {type(exc).__name__}", None, "server_error")
        REQUESTS.labels(route, str(getattr(response, "status_code", 200))).inc()
        LATENCY.labels(route).observe(time.perf_counter() - started)
        return response

    async def _answer(self, shape, request: Request):
        """Fit the prompts, retrieve, fit again with the sources, submit the choices, stream or collect."""
        req = shape.req
        if (err := self._check(req)) is not None or (err := await self._format_fits(req)) is not None:
            return err
        max_tokens = req.max_completion_tokens or (req.max_tokens if req.max_tokens is not None
                                                   else self.llm.max_new_tokens)
        prompts = req.prompts() if isinstance(shape, CompletionShape) else [shape.question]
        inline = _small(request)
        cites, extra = None, {}
        if self.rag is None and req.rag is not None and req.rag.enabled:
            return _error(400, "rag: this server has no RAG index (start it with --rag-index)", "rag")
        if self._rag_wanted(req, prompts):
            ids, err = await self._fit(shape.render, shape.question, max_tokens, inline)
            if err is not None:
                return err
            text, cites, extra = await self._retrieve(req, shape.question, shape.render, max_tokens, request.headers)
            if text is None:
                return extra
            prompts = [text]
        elif req.rag is not None and req.rag.enabled and self.rag is not None:
            return _error(400, "rag: retrieval works on one text prompt; this request has several or token ids",
                          "rag")
        fitted = []
        for p in prompts:
            ids, err = await self._fit(shape.render, p, max_tokens, inline and len(prompts) == 1)
            if err is not None:
                return err
            fitted.append(ids)
        submitted = time.perf_counter()
        jobs = self._submit(req, fitted, max_tokens)
        if req.stream:
            return await self._sse(shape, jobs, fitted, cites, extra, request)
        return await self._collect(shape, jobs, fitted, cites, extra, request, submitted)

    def _check(self, req):
        if req.model not in self.llm.served_names:
            return _error(404, f"model {req.model!r} not found; this server serves {self.llm.served_names}", "model",
                          "not_found_error")
        if not self.llm.ready:
            return _error(503, "model is not ready", None, "server_error")
        if getattr(req, "echo", False) and req.stream and req.logprobs is not None:
            return _error(400, "echo with logprobs is not streamed; ask without stream", "echo")
        if getattr(req, "echo", False) and req.logprobs is not None and self.llm.seq2seq:
            return _error(400, "echo with logprobs: a seq2seq model does not score its input", "echo")
        return None

    async def _format_fits(self, req):
        """None, or a 400 when the response_format's grammar cannot be built over this model's tokenizer."""
        grammar = req.response_format.grammar() if req.response_format else None
        if grammar is None:
            return None
        try:
            await asyncio.to_thread(self.llm.engine.constraint, grammar)
        except ValueError as exc:
            return _error(400, str(exc), "response_format")
        return None

    def _rag_wanted(self, req, prompts) -> bool:
        if self.rag is None:
            return False
        return (req.rag is None or req.rag.enabled) and len(prompts) == 1 and isinstance(prompts[0], str)

    async def _fit(self, render, prompt: str | list[int], max_tokens: int, inline: bool = False):
        """(token ids, None) or (None, 400): rendered and tokenized (in a worker thread unless ``inline``: a
        small request), checked against the context (token ids are taken as they are)."""
        def fit():
            return self.llm.check_fits(render(prompt) if isinstance(prompt, str) else prompt, max_tokens)

        try:
            return (fit() if inline else await asyncio.to_thread(fit)), None
        except InvalidInput as exc:
            return None, _error(400, str(exc), "max_tokens" if "max_tokens" in str(exc) else "prompt")

    def _submit(self, req, fitted: list[list[int]], max_tokens: int) -> list:
        """One engine job per (prompt, choice), prompt-major as OpenAI indexes choices; all or none."""
        adapter = None if req.model == self.llm.name else req.model
        echo = bool(getattr(req, "echo", False)) and req.top_logprobs_asked() is not None
        jobs = []
        try:
            for ids in fitted:
                for i in range(req.n):
                    jobs.append(self.llm.submit(ids, req.params(max_tokens, i, adapter, echo),
                                                self.limits.request_timeout_s))
        except QueueFull:
            for job in jobs:
                job.cancel()
            raise
        return jobs

    async def _collect(self, shape, jobs, fitted, cites, extra, request: Request, submitted: float):
        """The finished choices as one body; its ``Server-Timing: engine;dur=MS`` header is the time from
        submitting the jobs to their results (the rest of the client's wait is tokenization and HTTP)."""
        gathered = asyncio.ensure_future(asyncio.gather(*(job.result() for job in jobs)))
        gone = asyncio.ensure_future(_disconnected(request))
        timeout = self.limits.request_timeout_s
        try:
            await asyncio.wait({gathered, gone}, timeout=timeout + 5, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not gathered.done() or gathered.exception() is not None:
            for job in jobs:
                job.cancel()
            exc = None if not gathered.done() else gathered.exception()
            if gathered.done() and not isinstance(exc, TimeoutError):
                raise exc
            if not gathered.done():
                gathered.cancel()
            return _error(504, f"generation did not finish within {timeout:g} s", None, "timeout_error")
        gens: list[Generation] = gathered.result()
        engine_ms = (time.perf_counter() - submitted) * 1000
        body = await self._railed_body(shape, gens, fitted, request)
        if cites is not None:
            body["citations"] = cites
        return JSONResponse(body, headers={**extra, "Server-Timing": f"engine;dur={engine_ms:.3f}"})

    async def _railed_body(self, shape, gens: list[Generation], fitted, request: Request) -> dict:
        from shipyard.serving.openai_rails import extension, guard_output, runs

        usage = _usage(fitted, gens)
        if runs(self.rails, "output"):
            gens, found = await asyncio.to_thread(guard_output, self.rails, gens)
        else:
            found = []
        found = [*getattr(request.state, "rails_found", []), *found]
        return {**shape.body(gens, usage), **extension(found)}

    async def _sse(self, shape, jobs, fitted, cites, headers, request: Request):
        """Server-sent events (``openai_stream``). The first event of the first choice is awaited before the
        response starts, so a request timed out while queued is a 504, not a cut stream."""
        from shipyard.serving.openai_rails import StreamRails
        from shipyard.serving.openai_stream import ChoiceStream

        rails = StreamRails(self.rails, len(jobs), getattr(request.state, "rails_found", []))
        stream = ChoiceStream(shape, jobs, fitted, cites, self.llm.tokenizer, rails)
        failure = await stream.start()
        if isinstance(failure, TimeoutError):
            return _error(504, f"generation did not finish within {self.limits.request_timeout_s:g} s", None,
                          "timeout_error")
        if failure is not None:
            raise failure
        return StreamingResponse(stream.events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})

    async def _retrieve(self, req, question: str, render, max_tokens: int, headers):
        """(user text, citations, response headers) or (None, None, error): the RAG step of one request.
        Citations are None when retrieval failed, and the text is then ``question``."""
        from shipyard.serving.rag import Rejected, tenant_of

        rag = self.rag
        try:
            tenant = tenant_of(req.rag, headers)
            found = await rag.retrieve(question, tenant, (req.rag and req.rag.top_k) or rag.settings.top_k,
                                       req.rag.filters if req.rag else {})
        except Rejected as exc:
            kind = "not_found_error" if exc.status == 404 else "invalid_request_error"
            return None, None, _error(exc.status, str(exc), f"rag.{exc.param}" if exc.param else "rag", kind)
        except Exception as exc:  # sidecar down, slow or failing: answer without sources, say so
            return question, None, _degraded(exc)
        return await asyncio.to_thread(self._with_sources, question, found, render, max_tokens)

    def _with_sources(self, question: str, found: dict, render, max_tokens: int):
        from shipyard.features.rag_prompt import augment

        llm = self.llm
        budget = min(llm.context_length, self.rag.settings.context_tokens)

        def room(text: str) -> int:
            return budget - llm.count_tokens(render(text)) - (0 if llm.seq2seq else max_tokens)

        text, cites = augment(question, found["chunks"], llm.count_tokens, room)
        ref = f"{found['index']}@{found['version']}"
        if found["chunks"] and not cites:
            warning = '199 shipyard "no retrieved source fits the context; answered without RAG"'
            return question, [], {"X-Shipyard-RAG": "no-room", "X-Shipyard-RAG-Index": ref, "Warning": warning}
        return text, cites, {"X-Shipyard-RAG": "used", "X-Shipyard-RAG-Index": ref}


def _usage(fitted: list[list[int]], gens: list[Generation]):
    from openai.types import CompletionUsage

    from shipyard.serving.metrics import TOKENS

    n_prompt, done = sum(len(ids) for ids in fitted), sum(g.completion_tokens for g in gens)
    TOKENS.labels("prompt").inc(n_prompt)
    TOKENS.labels("completion").inc(done)
    return CompletionUsage(prompt_tokens=n_prompt, completion_tokens=done, total_tokens=n_prompt + done)


def _small(request: Request) -> bool:
    """Whether the request body is under ``INLINE_BODY_BYTES`` (a chunked body of unknown size is not)."""
    length = request.headers.get("content-length", "")
    return length.isdigit() and int(length) <= INLINE_BODY_BYTES


def openai_router(llm: ShipyardLLM, limits: Limits | None = None, rag: RagClient | None = None) -> APIRouter:
    """The ``/openai/v1`` routes of ``OpenAIEndpoints`` for one served model."""
    return OpenAIEndpoints(llm, limits, rag).router()

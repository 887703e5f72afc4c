"""OpenAI-compatible routes (``/openai/v1``) mounted on KServe's own FastAPI app.

``OpenAIEndpoints`` holds one served model's routes as small methods, after KServe's own
``OpenAIEndpoints``: both routes share ``_answer`` (fit the prompt, retrieve, fit again with the sources,
then stream or batch), and what differs between chat and text completions is a ``_Shape`` (the prompt
rendering, the stream chunk and the response body).

Why not KServe's OpenAI layer: in KServe 0.21 ``kserve.protocol.rest.openai`` imports vLLM's
protocol types, and without vLLM (656 MB, pinned to another torch) the routes silently do not
register. This CPU/local runtime serves the same paths with transformers and builds every
response with the ``openai`` package's own pydantic models, so the official client parses them.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from kserve.errors import InvalidInput
from pydantic import BaseModel, ConfigDict, Field, field_validator

from shipyard.serving.llm import Generation, SamplingParams, ShipyardLLM
from shipyard.serving.options import Limits
from shipyard.serving.rag import RagClient, RagOptions


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int | None = Field(None, gt=0, le=1_000_000)
    max_completion_tokens: int | None = Field(None, gt=0, le=1_000_000)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="Extension (vLLM's): sample from the k most likely tokens; 0 = all.")
    n: int = Field(1, ge=1, le=8)
    stop: str | list[str] | None = None
    seed: int | None = None
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: float = Field(1.0, gt=0, le=10, description="Extension (vLLM's): CTRL's penalty; 1 = off.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    rag: RagOptions | None = Field(None, description="Extension: retrieval for this request (see serving.rag).")

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4 or any(not s or len(s) > 200 for s in stops):
            raise ValueError("stop: up to 4 non-empty strings of at most 200 characters")
        return v

    def params(self, max_tokens: int, index: int, adapter: str | None = None) -> SamplingParams:
        stops = tuple([self.stop] if isinstance(self.stop, str) else (self.stop or []))
        return SamplingParams(max_tokens, self.temperature, self.top_p, self.top_k, stops,
                              None if self.seed is None else self.seed + index, self.frequency_penalty,
                              self.presence_penalty, self.repetition_penalty, adapter)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=100_000)
    name: str | None = None


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)


class CompletionRequest(_Request):
    prompt: str = Field(max_length=100_000)


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": kind, "param": param, "code": None}})


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
    return _error(400, detail, param)


class _Shape:
    """How one route renders its prompt and shapes its stream chunks and its response body."""

    def __init__(self, req: _Request, prefix: str, render, question: str):
        self.req, self.render, self.question = req, render, question
        self.rid, self.created = f"{prefix}-{uuid.uuid4().hex}", int(time.time())


class _ChatShape(_Shape):
    """The last user message is the question (RAG rewrites it); the chat template renders the rest around it."""

    def __init__(self, req: ChatRequest, llm: ShipyardLLM):
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        at = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=len(messages) - 1)
        self.messages, self.at, self.llm = messages, at, llm
        super().__init__(req, "chatcmpl", self._render, messages[at]["content"])

    def _render(self, text: str) -> str:
        m, at = self.messages, self.at
        return self.llm.chat_prompt([*m[:at], {**m[at], "content": text}, *m[at + 1:]])

    def chunk(self, i: int, text: str | None, finish: str | None) -> dict:
        delta = {"role": "assistant", "content": ""} if text is None else ({"content": text} if text else {})
        return {"id": self.rid, "object": "chat.completion.chunk", "created": self.created, "model": self.req.model,
                "choices": [{"index": i, "delta": delta, "finish_reason": finish}]}

    def body(self, gens: list[Generation], usage) -> dict:
        from openai.types.chat import ChatCompletion, ChatCompletionMessage
        from openai.types.chat.chat_completion import Choice

        return ChatCompletion(
            id=self.rid, object="chat.completion", created=self.created, model=self.req.model, usage=usage,
            choices=[Choice(index=i, finish_reason=g.finish_reason,
                            message=ChatCompletionMessage(role="assistant", content=g.text))
                     for i, g in enumerate(gens)]).model_dump(exclude_none=True)


class _CompletionShape(_Shape):
    def __init__(self, req: CompletionRequest):
        super().__init__(req, "cmpl", lambda text: text, req.prompt)

    def chunk(self, i: int, text: str | None, finish: str | None) -> dict:
        return {"id": self.rid, "object": "text_completion", "created": self.created, "model": self.req.model,
                "choices": [{"index": i, "text": text or "", "finish_reason": finish, "logprobs": None}]}

    def body(self, gens: list[Generation], usage) -> dict:
        from openai.types import Completion, CompletionChoice

        return Completion(
            id=self.rid, object="text_completion", created=self.created, model=self.req.model, usage=usage,
            choices=[CompletionChoice(index=i, text=g.text, finish_reason=g.finish_reason)
                     for i, g in enumerate(gens)]).model_dump(exclude_none=True)


class OpenAIEndpoints:
    """The ``/openai/v1`` routes for one served model; with ``rag``, answers cite retrieved chunks."""

    def __init__(self, llm: ShipyardLLM, limits: Limits | None = None, rag: RagClient | None = None):
        from shipyard.serving.batcher import Batcher

        limits = limits or Limits()
        self.llm, self.limits, self.rag = llm, limits, rag
        self.batcher = Batcher(llm, limits.max_batch_size, limits.max_wait_ms, limits.max_queue)

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/openai/v1")
        router.add_api_route("/models", self.list_models, methods=["GET"])
        router.add_api_route("/chat/completions", self.chat, methods=["POST"])
        router.add_api_route("/completions", self.completions, methods=["POST"])
        return router

    async def list_models(self):
        from openai.types import Model

        return {"object": "list", "data": [Model(id=name, created=0, object="model", owned_by="shipyard").model_dump()
                                           for name in self.llm.served_names]}

    async def chat(self, req: ChatRequest, request: Request):
        t0 = time.perf_counter()
        return self._observe("chat", t0, await self._answer(_ChatShape(req, self.llm), request.headers))

    async def completions(self, req: CompletionRequest, request: Request):
        t0 = time.perf_counter()
        return self._observe("completions", t0, await self._answer(_CompletionShape(req), request.headers))

    @staticmethod
    def _observe(route: str, started: float, response):
        from shipyard.serving.metrics import LATENCY, REQUESTS

        REQUESTS.labels(route, str(getattr(response, "status_code", 200))).inc()
        LATENCY.labels(route).observe(time.perf_counter() - started)
        return response

    async def _answer(self, shape: _Shape, headers):
        """Fit the prompt, retrieve, fit again with the sources, then stream or batch the choices."""
        req = shape.req
        if (err := self._check(req)) is not None:
            return err
        prompt = shape.render(shape.question)
        max_tokens, n_prompt, err = self._budget(req, prompt)
        if err is not None:
            return err
        text, cites, extra = await self._retrieve(req, shape.question, shape.render, max_tokens, headers)
        if text is None:
            return extra
        if cites:  # sources went in: the prompt changed
            prompt = shape.render(text)
            max_tokens, n_prompt, err = self._budget(req, prompt)
            if err is not None:
                return err
        if req.stream:
            return self._sse(req, prompt, max_tokens, n_prompt, shape.chunk, cites, extra)
        result, err = await self._run(req, prompt, max_tokens, n_prompt)
        if err is not None:
            return err
        body = shape.body(*result)
        if cites is not None:
            body["citations"] = cites
        return JSONResponse(body, headers=extra)

    def _check(self, req: _Request):
        if req.model not in self.llm.served_names:
            return _error(404, f"model {req.model!r} not found; this server serves {self.llm.served_names}", "model",
                          "not_found_error")
        if not self.llm.ready:
            return _error(503, "model is not ready", None, "server_error")
        return None

    def _adapter_of(self, req: _Request) -> str | None:
        return None if req.model == self.llm.name else req.model

    def _budget(self, req: _Request, prompt: str):
        max_tokens = req.max_completion_tokens or req.max_tokens or self.llm.max_new_tokens
        try:
            return max_tokens, self.llm.check_fits(prompt, max_tokens), None
        except InvalidInput as exc:
            return max_tokens, 0, _error(400, str(exc), "max_tokens")

    async def _run(self, req: _Request, prompt: str, max_tokens: int, n_prompt: int):
        """(generations, usage) or (None, error response): n choices through the batcher, bounded in time."""
        from openai.types import CompletionUsage

        from shipyard.serving.batcher import QueueFull
        from shipyard.serving.metrics import TOKENS

        tasks = [asyncio.ensure_future(self.batcher.submit(prompt, req.params(max_tokens, i, self._adapter_of(req))))
                 for i in range(req.n)]
        timeout = self.limits.request_timeout_s
        try:
            gens = await asyncio.wait_for(asyncio.gather(*tasks), timeout=timeout)
        except QueueFull as exc:
            return None, _error(429, str(exc), None, "rate_limit_error")
        except asyncio.TimeoutError:
            return None, _error(504, f"generation did not finish within {timeout:g} s", None, "timeout_error")
        finally:  # one choice refused or late: its siblings give their queue places back
            for task in tasks:
                if not task.done():
                    task.cancel()
        done = sum(g.completion_tokens for g in gens)
        TOKENS.labels("prompt").inc(n_prompt)
        TOKENS.labels("completion").inc(done)
        return (gens, CompletionUsage(prompt_tokens=n_prompt, completion_tokens=done,
                                      total_tokens=n_prompt + done)), None

    async def _retrieve(self, req: _Request, question: str, render, max_tokens: int, headers):
        """(user text, citations, response headers) or (None, None, error): the RAG step of one request.
        Citations are None when retrieval was off or failed, and the text is then ``question``."""
        from shipyard.serving.rag import Rejected, tenant_of

        rag = self.rag
        if req.rag is not None and req.rag.enabled and rag is None:
            return None, None, _error(400, "rag: this server has no RAG index (start it with --rag-index)", "rag")
        if rag is None or (req.rag is not None and not req.rag.enabled):
            return question, None, {}
        try:
            tenant = tenant_of(req.rag, headers)
            found = await rag.retrieve(question, tenant, (req.rag and req.rag.top_k) or rag.settings.top_k,
                                       req.rag.filters if req.rag else {})
        except Rejected as exc:
            kind = "not_found_error" if exc.status == 404 else "invalid_request_error"
            return None, None, _error(exc.status, str(exc), f"rag.{exc.param}" if exc.param else "rag", kind)
        except Exception as exc:  # sidecar down, slow or failing: answer without sources, say so
            return question, None, _degraded(exc)
        return self._with_sources(question, found, render, max_tokens)

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

    def _sse(self, req: _Request, prompt: str, max_tokens: int, n_prompt: int, chunk, citations=None, headers=None):
        """Server-sent events: ``chunk(index, text, finish_reason)`` per delta, then usage, then [DONE].
        Citations ride on the first event."""
        return StreamingResponse(self._events(req, prompt, max_tokens, n_prompt, chunk, citations),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})

    async def _events(self, req: _Request, prompt: str, max_tokens: int, n_prompt: int, chunk, citations):
        total = 0
        for i in range(req.n):
            it = self.llm.stream(prompt, req.params(max_tokens, i, self._adapter_of(req)))
            first = chunk(i, None, None)
            if i == 0 and citations is not None:
                first["citations"] = citations
            yield f"data: {json.dumps(first)}\n\n"
            while (item := await asyncio.to_thread(next, it, None)) is not None:
                if isinstance(item, Generation):
                    total += item.completion_tokens
                    yield f"data: {json.dumps(chunk(i, '', item.finish_reason))}\n\n"
                elif item:
                    yield f"data: {json.dumps(chunk(i, item, None))}\n\n"
        if req.stream_options and req.stream_options.include_usage:
            usage = {"prompt_tokens": n_prompt, "completion_tokens": total, "total_tokens": n_prompt + total}
            yield f"data: {json.dumps({**chunk(0, None, None), 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"


def _degraded(exc: Exception) -> dict[str, str]:
    """The headers of an answer given without sources because retrieval failed; logged and counted."""
    import logging

    from shipyard.serving.metrics import RAG_DEGRADED

    reason = f"{type(exc).__name__}: {exc}"[:200].replace('"', "'")
    logging.getLogger("shipyard.rag").warning("retrieval failed, answering without RAG: %s", reason)
    RAG_DEGRADED.inc()
    warning = f'199 shipyard "retrieval failed ({reason}); answered without RAG"'
    return {"X-Shipyard-RAG": "degraded", "Warning": warning}


def openai_router(llm: ShipyardLLM, limits: Limits | None = None, rag: RagClient | None = None) -> APIRouter:
    """The ``/openai/v1`` routes of ``OpenAIEndpoints`` for one served model."""
    return OpenAIEndpoints(llm, limits, rag).router()

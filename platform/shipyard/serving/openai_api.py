"""OpenAI-compatible routes (``/openai/v1``) mounted on KServe's own FastAPI app.

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
from dataclasses import dataclass
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from kserve.errors import InvalidInput
from pydantic import BaseModel, ConfigDict, Field, field_validator

from shipyard.serving.llm import Generation, SamplingParams, ShipyardLLM
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


@dataclass(frozen=True)
class Limits:
    """Batching and back-pressure of the runtime (``shipyard serve --max-batch-size ...``)."""

    max_batch_size: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 64
    request_timeout_s: float = 120.0


def openai_router(llm: ShipyardLLM, limits: Limits = Limits(), rag: RagClient | None = None) -> APIRouter:
    """The ``/openai/v1`` routes for one served model; with ``rag``, answers cite retrieved chunks."""
    from openai.types import Completion, CompletionChoice, CompletionUsage, Model
    from openai.types.chat import ChatCompletion, ChatCompletionMessage
    from openai.types.chat.chat_completion import Choice

    from shipyard.serving.batcher import Batcher, QueueFull
    from shipyard.serving.metrics import LATENCY, RAG_DEGRADED, REQUESTS, TOKENS

    router = APIRouter(prefix="/openai/v1")
    batcher = Batcher(llm, limits.max_batch_size, limits.max_wait_ms, limits.max_queue)

    def observe(route: str, started: float, response):
        status = getattr(response, "status_code", 200)
        REQUESTS.labels(route, str(status)).inc()
        LATENCY.labels(route).observe(time.perf_counter() - started)
        return response

    def check(req: _Request):
        if req.model not in llm.served_names:
            return _error(404, f"model {req.model!r} not found; this server serves {llm.served_names}", "model",
                          "not_found_error")
        if not llm.ready:
            return _error(503, "model is not ready", None, "server_error")
        return None

    def adapter_of(req: _Request) -> str | None:
        return None if req.model == llm.name else req.model

    def budget(req: _Request, prompt: str):
        max_tokens = req.max_completion_tokens or req.max_tokens or llm.max_new_tokens
        try:
            return max_tokens, llm.check_fits(prompt, max_tokens), None
        except InvalidInput as exc:
            return max_tokens, 0, _error(400, str(exc), "max_tokens")

    async def run(req: _Request, prompt: str, max_tokens: int, n_prompt: int):
        """(generations, usage) or (None, error response): n choices through the batcher, bounded in time."""
        tasks = [asyncio.ensure_future(batcher.submit(prompt, req.params(max_tokens, i, adapter_of(req)))) for i in range(req.n)]
        try:
            gens = await asyncio.wait_for(asyncio.gather(*tasks), timeout=limits.request_timeout_s)
        except QueueFull as exc:
            return None, _error(429, str(exc), None, "rate_limit_error")
        except asyncio.TimeoutError:
            return None, _error(504, f"generation did not finish within {limits.request_timeout_s:g} s", None,
                                "timeout_error")
        finally:  # one choice refused or late: its siblings give their queue places back
            for task in tasks:
                if not task.done():
                    task.cancel()
        done = sum(g.completion_tokens for g in gens)
        TOKENS.labels("prompt").inc(n_prompt)
        TOKENS.labels("completion").inc(done)
        return (gens, CompletionUsage(prompt_tokens=n_prompt, completion_tokens=done,
                                      total_tokens=n_prompt + done)), None

    async def retrieve(req: _Request, question: str, render, max_tokens: int, headers):
        """(user text, citations, response headers) or (None, None, error): the RAG step of one request.
        Citations are None when retrieval was off or failed, and the text is then ``question``."""
        import logging

        from shipyard.features.rag_prompt import augment
        from shipyard.serving.rag import Rejected, tenant_of

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
            reason = f"{type(exc).__name__}: {exc}"[:200].replace('"', "'")
            logging.getLogger("shipyard.rag").warning("retrieval failed, answering without RAG: %s", reason)
            RAG_DEGRADED.inc()
            return question, None, {"X-Shipyard-RAG": "degraded",
                                    "Warning": f'199 shipyard "retrieval failed ({reason}); answered without RAG"'}
        room = lambda text: llm.context_length - llm.count_tokens(render(text)) - (0 if llm.seq2seq else max_tokens)  # noqa: E731
        text, cites = augment(question, found["chunks"], llm.count_tokens, room)
        ref = f"{found['index']}@{found['version']}"
        if found["chunks"] and not cites:
            return question, [], {"X-Shipyard-RAG": "no-room", "X-Shipyard-RAG-Index": ref,
                                  "Warning": '199 shipyard "no retrieved source fits the context; answered without RAG"'}
        return text, cites, {"X-Shipyard-RAG": "used", "X-Shipyard-RAG-Index": ref}

    def respond(body: dict, citations, headers: dict):
        if citations is not None:
            body["citations"] = citations
        return JSONResponse(body, headers=headers)

    def sse(req: _Request, prompt: str, max_tokens: int, n_prompt: int, chunk, citations=None, headers=None):
        """Server-sent events: ``chunk(index, text, finish_reason)`` per delta, then usage, then [DONE].
        Citations ride on the first event."""
        async def events():
            total = 0
            for i in range(req.n):
                it = llm.stream(prompt, req.params(max_tokens, i, adapter_of(req)))
                first = chunk(i, None, None)
                if i == 0 and citations is not None:
                    first["citations"] = citations
                yield f"data: {json.dumps(first)}\n\n"
                while True:
                    item = await asyncio.to_thread(next, it, None)
                    if item is None:
                        break
                    if isinstance(item, Generation):
                        total += item.completion_tokens
                        yield f"data: {json.dumps(chunk(i, '', item.finish_reason))}\n\n"
                    elif item:
                        yield f"data: {json.dumps(chunk(i, item, None))}\n\n"
            if req.stream_options and req.stream_options.include_usage:
                usage = {"prompt_tokens": n_prompt, "completion_tokens": total, "total_tokens": n_prompt + total}
                yield f"data: {json.dumps({**chunk(0, None, None), 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})

    @router.get("/models")
    async def list_models():
        return {"object": "list", "data": [Model(id=name, created=0, object="model", owned_by="shipyard").model_dump()
                                           for name in llm.served_names]}

    @router.post("/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        t0 = time.perf_counter()
        return observe("chat", t0, await chat_impl(req, request.headers))

    @router.post("/completions")
    async def completions(req: CompletionRequest, request: Request):
        t0 = time.perf_counter()
        return observe("completions", t0, await completions_impl(req, request.headers))

    async def answer(req: _Request, headers, question: str, render, chunk, body):
        """The path both routes share: fit the prompt, retrieve, fit again with the sources, then
        stream (``chunk(i, text, finish)`` per event) or batch (``body(generations, usage)``)."""
        if (err := check(req)) is not None:
            return err
        prompt = render(question)
        max_tokens, n_prompt, err = budget(req, prompt)
        if err is not None:
            return err
        text, cites, extra = await retrieve(req, question, render, max_tokens, headers)
        if text is None:
            return extra
        if cites:  # sources went in: the prompt changed
            prompt = render(text)
            max_tokens, n_prompt, err = budget(req, prompt)
            if err is not None:
                return err
        if req.stream:
            return sse(req, prompt, max_tokens, n_prompt, chunk, cites, extra)
        result, err = await run(req, prompt, max_tokens, n_prompt)
        if err is not None:
            return err
        return respond(body(*result), cites, extra)

    async def chat_impl(req: ChatRequest, headers):
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        at = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=len(messages) - 1)
        render = lambda text: llm.chat_prompt([*messages[:at], {**messages[at], "content": text},  # noqa: E731
                                               *messages[at + 1:]])
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(i, text, finish):
            delta = {"role": "assistant", "content": ""} if text is None else ({"content": text} if text else {})
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                    "choices": [{"index": i, "delta": delta, "finish_reason": finish}]}

        def body(gens, usage):
            return ChatCompletion(
                id=rid, object="chat.completion", created=created, model=req.model, usage=usage,
                choices=[Choice(index=i, finish_reason=g.finish_reason,
                                message=ChatCompletionMessage(role="assistant", content=g.text))
                         for i, g in enumerate(gens)]).model_dump(exclude_none=True)

        return await answer(req, headers, messages[at]["content"], render, chunk, body)

    async def completions_impl(req: CompletionRequest, headers):
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(i, text, finish):
            return {"id": rid, "object": "text_completion", "created": created, "model": req.model,
                    "choices": [{"index": i, "text": text or "", "finish_reason": finish, "logprobs": None}]}

        def body(gens, usage):
            return Completion(
                id=rid, object="text_completion", created=created, model=req.model, usage=usage,
                choices=[CompletionChoice(index=i, text=g.text, finish_reason=g.finish_reason)
                         for i, g in enumerate(gens)]).model_dump(exclude_none=True)

        return await answer(req, headers, req.prompt, lambda text: text, chunk, body)

    return router

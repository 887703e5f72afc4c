"""OpenAI-compatible routes (``/openai/v1``) mounted on KServe's own FastAPI app.

Why not KServe's OpenAI layer: in KServe 0.21 ``kserve.protocol.rest.openai`` imports vLLM's
protocol types, and without vLLM (656 MB, pinned to another torch) the routes silently do not
register. This CPU/local runtime serves the same paths with transformers and builds every
response with the ``openai`` package's own pydantic models, so the official client parses them.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from kserve.errors import InvalidInput
from pydantic import BaseModel, ConfigDict, Field

from shipyard.serving.llm import ShipyardLLM


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int | None = Field(None, gt=0)
    max_completion_tokens: int | None = Field(None, gt=0)
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=8)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    user: str | None = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=100_000)


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)


class CompletionRequest(_Request):
    prompt: str = Field(max_length=100_000)


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": kind, "param": param, "code": None}})


def openai_router(llm: ShipyardLLM) -> APIRouter:
    """The ``/openai/v1`` routes for one served model."""
    from openai.types import Completion, CompletionChoice, CompletionUsage, Model
    from openai.types.chat import ChatCompletion, ChatCompletionMessage
    from openai.types.chat.chat_completion import Choice

    router = APIRouter(prefix="/openai/v1")

    def check(req: _Request):
        if req.model != llm.name:
            return _error(404, f"model {req.model!r} not found; this server serves {llm.name!r}", "model",
                          "not_found_error")
        if req.stream:
            return _error(400, "stream=true is not supported by this runtime yet", "stream")
        if not llm.ready:
            return _error(503, "model is not ready", None, "server_error")
        return None

    async def run(req: _Request, prompt: str):
        max_tokens = req.max_completion_tokens or req.max_tokens or llm.max_new_tokens
        try:
            n_prompt = llm.check_fits(prompt, max_tokens)
        except InvalidInput as exc:
            return None, _error(400, str(exc), "max_tokens")
        gens = [await llm.agenerate(prompt, max_tokens, req.temperature, req.top_p, req.stops(),
                                    None if req.seed is None else req.seed + i) for i in range(req.n)]
        usage = CompletionUsage(prompt_tokens=n_prompt, completion_tokens=sum(g.completion_tokens for g in gens),
                                total_tokens=n_prompt + sum(g.completion_tokens for g in gens))
        return (gens, usage), None

    @router.get("/models")
    async def list_models():
        return {"object": "list", "data": [Model(id=llm.name, created=0, object="model",
                                                 owned_by="shipyard").model_dump()]}

    @router.post("/chat/completions")
    async def chat(req: ChatRequest):
        if (err := check(req)) is not None:
            return err
        prompt = llm.chat_prompt([m.model_dump() for m in req.messages])
        result, err = await run(req, prompt)
        if err is not None:
            return err
        gens, usage = result
        return ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}", object="chat.completion", created=int(time.time()),
            model=llm.name, usage=usage,
            choices=[Choice(index=i, finish_reason=g.finish_reason,
                            message=ChatCompletionMessage(role="assistant", content=g.text))
                     for i, g in enumerate(gens)]).model_dump(exclude_none=True)

    @router.post("/completions")
    async def completions(req: CompletionRequest):
        if (err := check(req)) is not None:
            return err
        result, err = await run(req, req.prompt)
        if err is not None:
            return err
        gens, usage = result
        return Completion(
            id=f"cmpl-{uuid.uuid4().hex}", object="text_completion", created=int(time.time()),
            model=llm.name, usage=usage,
            choices=[CompletionChoice(index=i, text=g.text, finish_reason=g.finish_reason)
                     for i, g in enumerate(gens)]).model_dump(exclude_none=True)

    return router

"""The OpenAI routes' error bodies, the RAG-degraded headers and the disconnect watch, shared by plain chat and apps."""

from __future__ import annotations

import asyncio
import logging

from fastapi import Request
from fastapi.responses import JSONResponse

DISCONNECT_POLL_S = 0.25


def error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
          code: str | None = None):
    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": kind, "param": param, "code": code}})


async def disconnected(request: Request) -> None:
    """Returns once the client has gone away."""
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)


def degraded(exc: Exception) -> dict[str, str]:
    """The headers of an answer given without sources because retrieval failed; logged and counted."""
    from shipyard.serving.metrics import RAG_DEGRADED

    reason = f"{type(exc).__name__}: {exc}"[:200].replace('"', "'")
    logging.getLogger("shipyard.rag").warning("retrieval failed, answering without RAG: %s", reason)
    RAG_DEGRADED.inc()
    warning = f'199 shipyard "retrieval failed ({reason}); answered without RAG"'
    return {"X-Shipyard-RAG": "degraded", "Warning": warning}

"""The LLM runtime's side of RAG: ask the sidecar, put the chunks into the prompt, cite them.

RAG is on for every request of a runtime started with a sidecar URL (``--rag-url``, or
``shipyard serve --rag-index``), unless the request says ``"rag": {"enabled": false}``. The tenant
comes from the ``X-Shipyard-Tenant`` header (set by the gateway) or ``rag.tenant``; the sidecar only
searches that tenant's chunks. A sidecar that is down, slow or failing degrades the request to
no-RAG with a ``Warning`` header, never a 5xx; a request the sidecar rejects (unknown tenant, bad
filter) is the client's error and gets its 4xx.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from shipyard.features.rag_index_config import DEFAULT_TENANT, TENANT_PATTERN

TENANT_HEADER = "x-shipyard-tenant"


class RagOptions(BaseModel):
    """The ``rag`` extension field of a completions/chat request (``extra_body={"rag": {...}}``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    top_k: int | None = Field(None, ge=1, le=20)
    tenant: str | None = Field(None, pattern=TENANT_PATTERN)
    filters: dict[str, str] = Field(default_factory=dict)


@dataclass(frozen=True)
class RagSettings:
    url: str
    index: str = ""
    top_k: int = 4
    timeout_s: float = 2.0
    context_tokens: int = 512  # what a prompt with sources may fill, max_tokens included


class Rejected(Exception):
    """The sidecar refused the request (4xx): the client's error, passed on."""

    def __init__(self, status: int, message: str, param: str | None):
        super().__init__(message)
        self.status, self.param = status, param


class RagClient:
    def __init__(self, settings: RagSettings, rails=None):
        import httpx

        self.settings, self.rails = settings, rails  # rails: the deployment's source rails judge every chunk
        self.http = httpx.AsyncClient(base_url=settings.url.rstrip("/"), timeout=settings.timeout_s)

    async def retrieve(self, query: str, tenant: str, top_k: int, filters: dict[str, str]) -> dict:
        """The sidecar's answer; raises Rejected on 4xx and anything else on failure (callers degrade)."""
        resp = await self.http.post("/v1/retrieve", json={"query": query[-4000:], "tenant": tenant,
                                                          "top_k": top_k, "filters": filters})
        if 400 <= resp.status_code < 500:
            err = (resp.json().get("error") or {}) if resp.headers.get("content-type", "").startswith(
                "application/json") else {}
            raise Rejected(resp.status_code, f"retrieval: {err.get('message') or resp.text[:300]}", err.get("param"))
        resp.raise_for_status()
        found = resp.json()
        if self.rails is not None and self.rails.runs_at("sources"):
            import asyncio

            from shipyard.serving.metrics import count_rails

            chunks, findings = await asyncio.to_thread(self.rails.sources, found["chunks"])
            count_rails(findings)
            found = {**found, "chunks": chunks}
        return found


def tenant_of(opts: RagOptions | None, headers) -> str:
    """The request's tenant: header and body must agree when both are given."""
    import re

    header = headers.get(TENANT_HEADER)
    body = opts.tenant if opts else None
    if header is not None and not re.fullmatch(TENANT_PATTERN, header):
        raise Rejected(400, f"header X-Shipyard-Tenant: {header!r} is not a tenant name", "rag.tenant")
    if header and body and header != body:
        raise Rejected(400, f"tenant {body!r} in rag.tenant differs from X-Shipyard-Tenant {header!r}", "rag.tenant")
    return header or body or DEFAULT_TENANT



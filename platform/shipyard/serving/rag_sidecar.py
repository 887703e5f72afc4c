"""The RAG sidecar: ``python -m shipyard.serving.rag_sidecar --index NAME[@VERSION]``.

Its own process (its own container in the InferenceService pod) next to the LLM runtime, which
calls it on localhost. Routes: ``POST /v1/retrieve`` (query, top_k, tenant, filters -> chunks with
scores and sources), ``GET /v1/index`` (the served version and its tenants), ``GET /healthz`` and
``GET /readyz``. The index version is loaded from Feast once, before the port opens.
"""

from __future__ import annotations

import argparse
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from shipyard.features.rag_index_config import DEFAULT_TENANT, TENANT_PATTERN
from shipyard.features.retrieve import UnknownTenant, load_index


class RetrieveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=4000)
    top_k: int = Field(4, ge=1, le=50)
    tenant: str = Field(DEFAULT_TENANT, pattern=TENANT_PATTERN)
    filters: dict[str, str] = Field(default_factory=dict, description="Equality on source or doc_id.")


def _error(status: int, message: str, param: str | None, kind: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param}})


def build_app(retriever, embedder, info: dict) -> FastAPI:
    """The sidecar's FastAPI app over a loaded retriever (``Retriever`` or ``FeastRetriever``)."""
    app = FastAPI(title="shipyard-rag-sidecar")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if p != "body") or None
        return _error(400, f"{param or 'body'}: {first['msg']}", param, "invalid_request_error")

    @app.get("/healthz")
    def healthz():
        return {"status": "alive"}

    @app.get("/readyz")
    def readyz():
        return {"status": "ready", "index": info["index"], "version": info["version"]}

    @app.get("/v1/index")
    def index():
        return info

    @app.post("/v1/retrieve")
    def retrieve(req: RetrieveRequest):  # sync: FastAPI runs it on its thread pool, off the event loop
        t0 = time.perf_counter()
        vec = embedder.embed([req.query])[0]
        try:
            hits = retriever.search(vec, req.tenant, req.top_k, req.filters)
        except UnknownTenant as exc:
            return _error(404, str(exc), "tenant", "not_found_error")
        except ValueError as exc:
            return _error(400, str(exc), "filters", "invalid_request_error")
        return {"index": info["index"], "version": info["version"], "tenant": req.tenant,
                "took_ms": round((time.perf_counter() - t0) * 1000, 3),
                "chunks": [{"chunk_id": h.chunk_id, "text": h.text, "source": h.source, "doc_id": h.doc_id,
                            "score": round(h.score, 6)} for h in hits]}

    return app


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m shipyard.serving.rag_sidecar", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", required=True, help="NAME (latest version) or NAME@VERSION")
    ap.add_argument("--repo", default=None, help="Feast repo (default $SHIPYARD_FEAST_REPO or .shipyard/feast)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8081)
    ap.add_argument("--backend", choices=("faiss", "feast"), default="faiss",
                    help="faiss: indexes built from the version's Feast rows; feast: Feast's online store")
    ap.add_argument("--parent-pid", type=int, default=None, help="Stop when this process is gone (set by "
                                                                    "`shipyard serve`, which starts the sidecar).")
    args = ap.parse_args(argv)
    import uvicorn

    if args.parent_pid:
        from shipyard.serving.guards import exit_with_parent

        exit_with_parent(args.parent_pid)
    retriever, embedder, info = load_index(args.index, args.repo, args.backend)
    print(f"rag sidecar: index {info['ref']} ({info['chunks']} chunks, tenants {sorted(info['tenants'])}) "
          f"on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(build_app(retriever, embedder, info), host=args.host, port=args.port, log_level="warning",
                timeout_graceful_shutdown=10)


if __name__ == "__main__":
    main()

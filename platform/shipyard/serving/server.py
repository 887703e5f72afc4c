"""Start KServe's ModelServer for one Shipyard model, OpenAI routes included, on a chosen address.

KServe's RESTServer binds 0.0.0.0 and parses ``sys.argv`` when ``kserve.model_server`` is first
imported; here the import sees a clean argv, and the bind address is set explicitly (loopback
unless told otherwise).
"""

from __future__ import annotations

import asyncio
import sys


def _import_kserve_server():
    argv, sys.argv = sys.argv, sys.argv[:1]  # KServe parses argv at import time
    try:
        import kserve.model_server as model_server
        from kserve.protocol.rest.server import RESTServer
    finally:
        sys.argv = argv
    return model_server, RESTServer


def build_server(model_dir, name: str, host: str, port: int, max_new_tokens: int, limits=None, adapters=None,
                 rag=None, device: str = "auto", dtype: str = "auto"):
    """(ModelServer, RESTServer, model) ready to ``asyncio.run(rest.start())``; ``rag``: RagSettings;
    ``device``/``dtype``: where and in what precision the model runs (``shipyard.models.device``)."""
    model_server, RESTServer = _import_kserve_server()
    from shipyard.serving.llm import ShipyardLLM
    from shipyard.serving.openai_api import openai_router

    llm = ShipyardLLM(name, model_dir, max_new_tokens, adapters, device=device, dtype=dtype)
    llm.load()
    server = model_server.ModelServer(http_port=port, enable_grpc=False, workers=1)
    server.register_model(llm)
    from fastapi.exceptions import RequestValidationError

    from shipyard.serving.openai_api import Limits, validation_error_handler
    from shipyard.serving.rag import RagClient

    model_server.app.include_router(openai_router(llm, limits or Limits(), RagClient(rag) if rag else None))
    model_server.app.add_exception_handler(RequestValidationError, validation_error_handler)
    rest = RESTServer(model_server.FASTAPI_APP_IMPORT_STRING, server.dataplane,
                      server.model_repository_extension, port, workers=1, grace_period=10)
    rest.config.host = host
    return server, rest, llm


def serve_model(model_uri: str, host: str = "127.0.0.1", port: int = 8080, name: str | None = None,
                max_new_tokens: int = 64, tracking_uri: str | None = None, limits=None,
                adapters: dict[str, str] | None = None, rag=None, device: str = "auto", dtype: str = "auto") -> None:
    """Resolve ``model_uri`` (``models:/NAME@ALIAS`` or a directory) and serve it until stopped;
    ``rag`` (RagSettings) points the runtime at a running sidecar."""
    from shipyard.paths import default_tracking_uri
    from shipyard.tracking.registry import resolve_model_dir

    model_dir = resolve_model_dir(tracking_uri or default_tracking_uri(), model_uri)
    name = name or default_name(model_uri)
    server, rest, llm = build_server(model_dir, name, host, port, max_new_tokens, limits, adapters, rag, device, dtype)
    print(f"serving {model_uri} as {name!r} on {llm.device} ({llm.dtype_name}) at http://{host}:{port} "
          f"(OpenAI API at http://{host}:{port}/openai/v1)"
          + (f" with RAG from {rag.url} ({rag.index or 'index of the sidecar'})" if rag else ""), flush=True)
    server.setup_event_loop()
    asyncio.run(rest.start())


def default_name(model_uri: str) -> str:
    """``models:/shipyard-tiny@champion`` -> ``shipyard-tiny``; a directory -> its name."""
    if model_uri.startswith("models:/"):
        return model_uri.removeprefix("models:/").split("@")[0].split("/")[0]
    return model_uri.rstrip("/").rsplit("/", 1)[-1]


def parse_adapters(items: list[str]) -> dict[str, str]:
    """``["name=dir", ...]`` -> {name: dir}; each dir must hold a PEFT adapter."""
    from pathlib import Path

    out = {}
    for item in items:
        name, sep, where = item.partition("=")
        if not sep or not name or not where:
            raise ValueError(f"--adapter {item!r}: expected NAME=DIR")
        if not (Path(where) / "adapter_config.json").exists():
            raise FileNotFoundError(f"--adapter {name}: {where} holds no adapter_config.json")
        out[name] = where
    return out

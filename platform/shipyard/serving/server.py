"""Start KServe's ModelServer for one Shipyard model, OpenAI routes included, on a chosen address.

KServe's RESTServer binds 0.0.0.0 and parses ``sys.argv`` when ``kserve.model_server`` is first
imported; here the import sees a clean argv, and the bind address is set explicitly (loopback
unless told otherwise).
"""

from __future__ import annotations

import asyncio
import sys

from shipyard.serving.options import ServeOptions


def _import_kserve_server():
    argv, sys.argv = sys.argv, sys.argv[:1]  # KServe parses argv at import time
    try:
        import kserve.model_server as model_server
        from kserve.protocol.rest.server import RESTServer
    finally:
        sys.argv = argv
    return model_server, RESTServer


def build_server(model_dir, name: str, opts: ServeOptions, rag_index: str = "", tracking_uri: str | None = None):
    """(ModelServer, RESTServer, model) ready to ``asyncio.run(rest.start())``. With ``opts.rag_url`` the
    runtime asks that sidecar on every request (``rag_index``: the NAME@N it serves, for the log);
    ``tracking_uri`` is where a registered ``--app-prompt`` is looked up."""
    model_server, RESTServer = _import_kserve_server()
    from fastapi.exceptions import RequestValidationError

    from shipyard.serving.guards import BodyLimit, LastResort, port_free
    from shipyard.serving.llm import ShipyardLLM
    from shipyard.serving.openai_api import OpenAIEndpoints, validation_error_handler
    from shipyard.serving.openai_rails import load_rails
    from shipyard.serving.rag import RagClient, RagSettings

    port_free(opts.host, opts.port, "the model server")  # before the model loads: fail fast, never share a port
    prompt = app_prompt(opts.app_prompt, tracking_uri) if opts.app_prompt else None
    examples = app_examples(opts, prompt)
    rails = load_rails(opts.guardrails)
    llm = ShipyardLLM(name, model_dir, opts.max_new_tokens, parse_adapters(opts.adapter), device=opts.device,
                      dtype=opts.dtype, max_batch_size=opts.max_batch_size, max_queue=opts.max_queue,
                      engine=opts.engine, vllm=(opts.vllm_url, opts.vllm_wait_s))
    llm.load()
    if llm.engine_kind == "llamacpp":
        from shipyard.serving.llamacpp import cores_to_ggml

        cores_to_ggml()
    server = model_server.ModelServer(http_port=opts.port, enable_grpc=False, workers=1)
    server.register_model(llm)
    rag = RagClient(RagSettings(opts.rag_url, rag_index, opts.rag_top_k, opts.rag_timeout_s,
                                 opts.rag_context_tokens), rails) if opts.rag_url else None
    model_server.app.include_router(OpenAIEndpoints(llm, opts.limits(), rag, prompt, memory(opts), rails,
                                                          examples).router())
    model_server.app.add_exception_handler(RequestValidationError, validation_error_handler)
    model_server.app.add_middleware(BodyLimit, max_bytes=opts.max_body_kb * 1024)
    model_server.app.add_middleware(LastResort)  # outermost: whatever escapes a route is a 500, connection kept
    rest = RESTServer(model_server.FASTAPI_APP_IMPORT_STRING, server.dataplane,
                      server.model_repository_extension, opts.port, workers=1, grace_period=10)
    rest.config.host = opts.host
    return server, rest, llm


def serve_model(model_uri: str, opts: ServeOptions, tracking_uri: str | None = None, rag_index: str = "") -> None:
    """Resolve ``model_uri`` (``models:/NAME@ALIAS`` or a directory) and serve it until stopped."""
    from shipyard.paths import default_tracking_uri
    from shipyard.tracking.registry import resolve_model_dir

    model_dir = resolve_model_dir(tracking_uri or default_tracking_uri(), model_uri)
    name = opts.name or default_name(model_uri)
    server, rest, llm = build_server(model_dir, name, opts, rag_index, tracking_uri)
    where = f"http://{opts.host}:{opts.port}"
    print(f"serving {model_uri} as {name!r} with {llm.engine_kind} on {llm.device} ({llm.dtype_name}) at {where} "
          f"(OpenAI API at {where}/openai/v1)"
          + (f" with RAG from {opts.rag_url} ({rag_index or 'index of the sidecar'})" if opts.rag_url else ""),
          flush=True)
    quiet_request_path()
    server.setup_event_loop()
    asyncio.run(rest.start())


def app_examples(opts: ServeOptions, prompt):
    """The fewshot app's example pool: --app-examples, else the prompt's own examples (None without a prompt)."""
    from shipyard.apps.examples import ExamplePool

    if opts.app_examples and prompt is None:
        raise ValueError("--app-examples: the fewshot app also needs --app-prompt (its system prompt and template)")
    if prompt is None:
        return None
    return ExamplePool.from_file(opts.app_examples) if opts.app_examples else ExamplePool(prompt.examples)


def app_prompt(ref: str, tracking_uri: str | None):
    """The fewshot app's ``PromptSpec``: from a YAML file when ``ref`` is one, else from MLflow's registry."""
    from shipyard.apps import prompts

    try:
        return prompts.resolve(ref, tracking_uri)[0]
    except ValueError as exc:
        raise ValueError(f"--app-prompt {ref}: {exc}") from None


def memory(opts: ServeOptions):
    from shipyard.apps.memory import ConversationMemory, MemoryLimits

    if opts.memory_turns <= 0:
        return None
    return ConversationMemory(MemoryLimits(max_turns=opts.memory_turns, max_conversations=opts.memory_conversations))


def quiet_request_path() -> None:
    """Less per-request latency for a lone request, measured in ``benchmarks/serving.py``: the GIL switches
    every 1 ms, not 5, so the event loop is not kept waiting behind the engine thread's Python; KServe's
    per-request wall/cpu timing lines (kserve.trace) stay off at INFO, as /metrics has the same histogram
    (the access log stays)."""
    import logging

    sys.setswitchinterval(0.001)
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)


def default_name(model_uri: str) -> str:
    """``models:/shipyard-tiny@champion`` -> ``shipyard-tiny``; a directory -> its name."""
    if model_uri.startswith("models:/"):
        return model_uri.removeprefix("models:/").split("@")[0].split("/")[0]
    return model_uri.rstrip("/").rsplit("/", 1)[-1]


def parse_adapters(items: list[str] | tuple[str, ...]) -> dict[str, str]:
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

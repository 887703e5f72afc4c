"""Servers on one machine: ``shipyard serve MODEL [--rag-index NAME]`` (the RAG sidecar as a child process
on ``--rag-port``, then the LLM runtime pointed at it; the sidecar stops with the runtime), and the
start/ready/stop/chat helpers that ``make demo``, the tests and the benchmarks use.

A registered model version pinned to an index version (tag ``shipyard.rag_index_version``, set
by the lifecycle's register step) is served with exactly that version, RAG on, unless ``--no-rag``;
asking for another version of it is refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

from shipyard.serving.options import ServeOptions


def choose_index(requested: str | None, pinned: str | None) -> tuple[str | None, str | None]:
    """(index ref to serve, a note for the operator) from ``--rag-index`` and the model's pin."""
    from shipyard.features.store import parse_ref

    if requested is None:
        return pinned, (f"model version is pinned to RAG index {pinned}" if pinned else None)
    name, version = parse_ref(requested)
    if pinned is None:
        return requested, (f"model version pins no RAG index; serving {requested}"
                           f"{'' if version else ' (its latest version)'} unevaluated with it")
    pinned_name, pinned_version = parse_ref(pinned)
    if name != pinned_name or (version is not None and version != pinned_version):
        raise ValueError(f"--rag-index {requested}: the model version is pinned to {pinned} (the pair it was "
                         f"evaluated with); serve that, or register a model evaluated with {requested}")
    return pinned, f"model version is pinned to RAG index {pinned}"


def start_sidecar(ref: str, port: int, repo: str | None = None, timeout: float = 180.0) -> subprocess.Popen:
    """Start ``python -m shipyard.serving.rag_sidecar`` on 127.0.0.1:port and wait until it is ready.

    A port another process holds is refused (a stale sidecar would answer the readiness probe and serve
    an index nobody asked for); the sidecar ends with this process, however this one ends."""
    from shipyard.serving.guards import die_with_parent, port_free

    port_free("127.0.0.1", port, "the RAG sidecar")
    cmd = [sys.executable, "-m", "shipyard.serving.rag_sidecar", "--index", ref, "--port", str(port),
           "--parent-pid", str(os.getpid())]
    if repo:
        cmd += ["--repo", repo]
    proc = subprocess.Popen(cmd, env=dict(os.environ), preexec_fn=die_with_parent)
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", proc, timeout, f"RAG sidecar for {ref}")
    except RuntimeError:
        stop(proc)
        raise
    return proc


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180.0, what: str = "model server") -> None:
    """Poll ``url`` until it answers 200; fail early if the server process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s ({url})")


def stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM (servers drain in-flight requests), then SIGKILL after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve_local(model_uri: str, opts: ServeOptions, *, rag_index: str | None = None, no_rag: bool = False,
                rag_port: int | None = None, feast_repo: str | None = None, tracking_uri: str | None = None) -> None:
    """``shipyard serve``: the runtime, and the RAG sidecar as a child process when the model pins an index
    (or ``rag_index`` asks for one) unless ``no_rag``."""
    from dataclasses import replace

    from shipyard.paths import default_tracking_uri
    from shipyard.serving.server import parse_adapters, serve_model
    from shipyard.tracking.registry import pinned_rag_index

    parse_adapters(opts.adapter)  # a bad --adapter fails here, before the model is fetched or a sidecar starts
    tracking_uri = tracking_uri or default_tracking_uri()
    ref, note = (None, None) if no_rag else choose_index(rag_index, pinned_rag_index(tracking_uri, model_uri))
    if ref is None:
        return serve_model(model_uri, opts, tracking_uri)
    print(f"rag: {note}", flush=True)
    rag_port = rag_port or opts.port + 1
    sidecar = start_sidecar(ref, rag_port, feast_repo)
    try:
        serve_model(model_uri, replace(opts, rag_url=f"http://127.0.0.1:{rag_port}"), tracking_uri, ref)
    finally:
        stop(sidecar)


def start_server(model_uri: str, port: int, tracking_uri: str, max_new_tokens: int,
                 rag_url: str | None = None, rag_context_tokens: int | None = None,
                 engine: str = "auto", app_prompt: str | None = None) -> subprocess.Popen:
    """The runtime in a child process, started as its container starts it (``python -m shipyard.serving``)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    return subprocess.Popen([sys.executable, "-m", "shipyard.serving", model_uri, "--host", "127.0.0.1",
                             "--port", str(port), "--max-new-tokens", str(max_new_tokens), "--engine", engine]
                            + (["--rag-url", rag_url] if rag_url else [])
                            + (["--rag-context-tokens", str(rag_context_tokens)] if rag_context_tokens else [])
                            + (["--app-prompt", app_prompt] if app_prompt else []),
                            env=env)


def stop_server(proc: subprocess.Popen) -> None:
    stop(proc, timeout=30)


def chat_once(port: int, model: str, question: str, max_tokens: int, rag: bool | None = None):
    """One request through the official ``openai`` client, as any service would send it:
    (answer, citations or None). ``rag`` turns retrieval on or off for this request."""
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/openai/v1", api_key="not-needed", max_retries=0)
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                           max_tokens=max_tokens, temperature=0,
                                           extra_body=None if rag is None else {"rag": {"enabled": rag}})
    return reply.choices[0].message.content, (reply.model_extra or {}).get("citations")


def app_once(port: int, model: str, app: str, question: str, max_tokens: int) -> tuple[str, dict]:
    """One app request (``model: NAME:APP``) through the official ``openai`` client: (answer, its ``app``
    extension: steps, calls, error)."""
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/openai/v1", api_key="not-needed", max_retries=0)
    reply = client.chat.completions.create(model=f"{model}:{app}", messages=[{"role": "user", "content": question}],
                                           max_tokens=max_tokens)
    return reply.choices[0].message.content, (reply.model_extra or {}).get("app") or {}

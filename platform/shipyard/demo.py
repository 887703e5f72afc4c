"""``make demo``: run the lifecycle pipeline, serve the champion, chat with it, then ask the Python FAQ
through the RAG sidecar (the index version pinned to the champion) and print the answer with its citations.

    shipyard demo -c pipelines/configs/tiny-cpu.yaml
"""

from __future__ import annotations

from dataclasses import dataclass

from shipyard.data.shards import read_records
from shipyard.pipeline_runs import RunSummary, format_summary, run_local
from shipyard.serving.local import chat_once, start_server, stop, stop_server, wait_ready


@dataclass
class DemoResult:
    summary: RunSummary
    model_uri: str
    question: str
    answer: str
    rag_index: str | None = None
    rag_question: str | None = None
    rag_answer: str | None = None
    citations: list | None = None


FAQ_QUESTION = "Why does Python use indentation for grouping of statements?"


def run_demo(config_path: str, port: int = 8080, tracking_uri: str | None = None,
             echo=print) -> DemoResult:
    from shipyard.config import load_pipeline_config
    from shipyard.paths import default_tracking_uri

    tracking_uri = tracking_uri or default_tracking_uri()
    cfg = load_pipeline_config(config_path)
    summary = run_local("shipyard.pipelines.lifecycle", config_path, tracking_uri)
    echo(format_summary(summary))
    name = cfg.register_.model_name
    if summary.gate != "passed":
        from shipyard.tracking.registry import current_alias
        from shipyard.tracking.tags import CHAMPION

        if current_alias(tracking_uri, name, CHAMPION) is None:
            raise RuntimeError(f"the gate failed for {name} version {summary.version} ({summary.gate_failures}) "
                               f"and there is no earlier champion to serve; the run is in MLflow: {tracking_uri}")
        echo(f"The gate failed for version {summary.version}; serving the existing champion.")
    model_uri = f"models:/{name}@champion"

    rows, _ = read_records(cfg.evaluate.of_kind("generation")[0].data, ("instruction", "response"))
    question = f"{rows[0]['instruction']}\n\n{rows[0].get('input', '')}".strip()
    from shipyard.features.store import repo_for
    from shipyard.serving.local import start_sidecar
    from shipyard.tracking.registry import pinned_rag_index

    pinned = pinned_rag_index(tracking_uri, model_uri)
    sidecar = start_sidecar(pinned, port + 1, str(repo_for(tracking_uri))) if pinned else None
    rag_answer = citations = None
    try:
        proc = start_server(model_uri, port, tracking_uri, cfg.serve.max_new_tokens,
                            f"http://127.0.0.1:{port + 1}" if pinned else None)
        try:
            wait_ready(f"http://127.0.0.1:{port}/v1/models/{name}", proc)
            answer, _ = chat_once(port, name, question, cfg.serve.max_new_tokens, rag=False if pinned else None)
            if pinned:
                rag_answer, citations = chat_once(port, name, FAQ_QUESTION, cfg.serve.max_new_tokens, rag=True)
        finally:
            stop_server(proc)
    finally:
        if sidecar is not None:
            stop(sidecar)
    echo(f"\nChat with {model_uri} via POST /openai/v1/chat/completions:")
    echo(f"  user:      {question[:300]}")
    echo(f"  assistant: {answer}")
    echo(f"  reference: {rows[0]['response']}")
    if pinned:
        echo(f"\nThe same endpoint with RAG (index {pinned}, pinned to this model version, via the sidecar):")
        echo(f"  user:      {FAQ_QUESTION}")
        echo(f"  assistant: {rag_answer}")
        for c in citations or []:
            text = " ".join(c["text"].split())
            cut = "  (cut to fit)" if c["truncated"] else ""
            echo(f"  [{c['index']}] {c['doc_id']} ({c['source']})  score {c['score']:.3f}{cut}: "
                 f"{text[:150]}{'...' if len(text) > 150 else ''}")
    echo(f"\nServed model: {model_uri}")
    echo(f"MLflow data: {tracking_uri}  (browse it with `shipyard ui`, then http://127.0.0.1:5000)")
    return DemoResult(summary, model_uri, question, answer, pinned, FAQ_QUESTION if pinned else None, rag_answer,
                      citations)

"""``make demo``: run the lifecycle pipeline, serve the champion, chat with it, then ask the Python FAQ
through the RAG sidecar (the index version pinned to the champion) and print the answer with its citations.

    shipyard demo -c pipelines/configs/smollm2-cpu.yaml

The terminal gets one line per stage as it finishes (seconds, key metric) under a progress bar; every
other line (executor inputs, library warnings, server logs) goes to ``.shipyard/demo/demo.log``. Then:
the stage-gain table (each stage's output against its input on the same rows, the 95% interval of
the difference, the verdict), the gate, the chat and the RAG answer; last, the path of
``.shipyard/demo/summary.json``, the same facts for a machine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from shipyard.data.shards import read_records
from shipyard.pipeline_runs import RunSummary, run_local
from shipyard.serving.local import app_once, chat_once, start_server, stop, stop_server, wait_ready


@dataclass
class DemoResult:
    summary: RunSummary
    model_uri: str
    question: str
    answer: str
    reference: str = ""
    rag_index: str | None = None
    rag_question: str | None = None
    rag_answer: str | None = None
    citations: list | None = None
    stages: list[dict] = field(default_factory=list)
    summary_path: Path | None = None
    apps: list[dict] = field(default_factory=list)  # {app, question, answer, steps, calls, error}


FAQ_QUESTION = "Why does Python use indentation for grouping of statements?"
APP_QUESTION = "Tom has 4 boxes of 6 pencils and gives away 5 pencils. How many pencils does he keep?"
APP_MAX_TOKENS = 128  # per model call of a reasoning app: a short chain of thought or program
LOWER_IS_BETTER = {"bpb", "answer_bpb", "perplexity", "perplexity_ratio", "bpb_ratio", "answer_perplexity",
                   "answer_perplexity_rag", "kl_to_instruct", "rate", "mean_probability", "ms_per_token",
                   "first_token_ms", "size_ratio", "latency_ratio", "toxicity_rate_aligned"}


def demo_dir() -> Path:
    from shipyard.paths import state_dir

    path = state_dir() / "demo"
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_demo(config_path: str, port: int = 8080, tracking_uri: str | None = None, echo=None,
             log_path: str | Path | None = None) -> DemoResult:
    """The demo; ``echo`` (default: the terminal, with everything else sent to ``log_path``) prints."""
    from shipyard.console import quiet_console

    log_path = Path(log_path) if log_path else demo_dir() / "demo.log"
    log_path.unlink(missing_ok=True)
    if echo is not None:
        return _demo(config_path, port, tracking_uri, echo, log_path, quiet=False)
    with quiet_console(log_path) as out:
        try:
            return _demo(config_path, port, tracking_uri, lambda *a: print(*a, file=out, flush=True), log_path,
                         quiet=True, out=out)
        except BaseException:
            print(f"\n✗ the demo stopped; what every stage printed is in {log_path}", file=out, flush=True)
            raise


def _demo(config_path: str, port: int, tracking_uri: str | None, echo, log_path: Path, quiet: bool,
          out=None) -> DemoResult:
    from shipyard.config import load_pipeline_config
    from shipyard.paths import default_tracking_uri

    tracking_uri = tracking_uri or default_tracking_uri()
    cfg = load_pipeline_config(config_path)
    echo(f"Shipyard demo: profile {cfg.name} ({config_path}); full logs: {log_path}")
    summary = _run_pipeline(config_path, tracking_uri, log_path, out if quiet else None)
    stages = (summary.decision or {}).get("stages", [])
    echo(f"\nPipeline finished in {summary.wall_s:.0f} s (MLflow run {summary.parent_run_id})")
    echo("\n" + format_stage_table(stages))
    name = cfg.register_.model_name
    echo(f"\nGate: {summary.gate} for {name} version {summary.version}"
         + (f" -> models:/{name}@champion" if summary.gate == "passed" else ""))
    for failure in (summary.gate_failures or "").split("; "):
        if failure:
            echo(f"  ✗ {failure}")
    if summary.gate != "passed":
        from shipyard.tracking.registry import current_alias
        from shipyard.tracking.tags import CHAMPION

        if current_alias(tracking_uri, name, CHAMPION) is None:
            raise RuntimeError(f"the gate failed for {name} version {summary.version} ({summary.gate_failures}) "
                               f"and there is no earlier champion to serve; the run is in MLflow: {tracking_uri}")
        echo(f"The gate failed for version {summary.version}; serving the existing champion.")
    result = _chat(cfg, summary, tracking_uri, port)
    result.stages = stages
    _print_chat(result, echo)
    result.summary_path = write_summary(result, demo_dir() / "summary.json")
    echo(f"\nMLflow data: {tracking_uri}  (browse it with `shipyard ui`, then http://127.0.0.1:5000)")
    echo(f"Summary: {result.summary_path}")
    return result


def _run_pipeline(config_path: str, tracking_uri: str, log_path: Path, out) -> RunSummary:
    if out is None:
        return run_local("shipyard.pipelines.lifecycle", config_path, tracking_uri)
    import contextlib

    from shipyard.console import StageProgress, stage_metric

    with contextlib.ExitStack() as stack:  # the progress starts once the run exists, and stops with it
        def started(parent_run_id: str, total: int):
            stack.enter_context(StageProgress(log_path, out, total, stage_metric(tracking_uri, parent_run_id)))

        return run_local("shipyard.pipelines.lifecycle", config_path, tracking_uri, on_start=started)


def _chat(cfg, summary: RunSummary, tracking_uri: str, port: int) -> DemoResult:
    from shipyard.features.store import repo_for
    from shipyard.serving.local import start_sidecar
    from shipyard.tracking.registry import pinned_rag_index

    name = cfg.register_.model_name
    model_uri = f"models:/{name}@champion"
    rows, _ = read_records(cfg.evaluate.of_kind("generation")[0].data, ("instruction", "response"))
    question = f"{rows[0]['instruction']}\n\n{rows[0].get('input', '')}".strip()
    pinned = pinned_rag_index(tracking_uri, model_uri)
    sidecar = start_sidecar(pinned, port + 1, str(repo_for(tracking_uri))) if pinned else None
    rag_answer = citations = None
    try:
        # RAG prompts fitted to the budget the eval's rag suite measured them in
        proc = start_server(model_uri, port, tracking_uri, cfg.serve.max_new_tokens,
                            f"http://127.0.0.1:{port + 1}" if pinned else None, cfg.evaluate.context_length,
                            cfg.serve.engine, cfg.serve.app_prompt)
        try:
            wait_ready(f"http://127.0.0.1:{port}/v1/models/{name}", proc)
            answer, _ = chat_once(port, name, question, cfg.serve.max_new_tokens, rag=False if pinned else None)
            if pinned:
                rag_answer, citations = chat_once(port, name, FAQ_QUESTION, cfg.serve.max_new_tokens, rag=True)
            apps = _apps(port, name, cfg, pinned)
        finally:
            stop_server(proc)
    finally:
        if sidecar is not None:
            stop(sidecar)
    return DemoResult(summary, model_uri, question, answer, rows[0]["response"], pinned,
                      FAQ_QUESTION if pinned else None, rag_answer, citations, apps=apps)


def _apps(port: int, name: str, cfg, pinned) -> list[dict]:
    """Each prompt app once through the official openai client (``model: NAME:APP``): a word problem for the
    reasoning apps, the FAQ question for the document chain over the sidecar's sources."""
    apps = (["fewshot"] if cfg.serve.app_prompt else []) + ["cot", "pal", "react"]
    asked = [(app, APP_QUESTION, APP_MAX_TOKENS) for app in apps]
    # the chain answers in the serve default, leaving the sources the rest of the RAG budget
    asked += [("stuff", FAQ_QUESTION, cfg.serve.max_new_tokens)] if pinned else []
    out = []
    for app, q, max_tokens in asked:
        try:
            answer, ext = app_once(port, name, app, q, max_tokens)
        except Exception as exc:  # openai.APIError and transport errors: shown, and the demo goes on
            answer, ext = "", {"error": f"{type(exc).__name__}: {exc}"}
        out.append({"app": app, "question": q, "answer": answer, "steps": len(ext.get("steps", [])),
                    "calls": ext.get("calls"), "error": ext.get("error")})
    return out


def _print_chat(r: DemoResult, echo) -> None:
    echo(f"\nChat with {r.model_uri} via POST /openai/v1/chat/completions:")
    echo(f"  user:      {r.question[:300]}")
    echo(f"  assistant: {r.answer}")
    echo(f"  reference: {r.reference}")
    if r.rag_index:
        echo(f"\nThe same endpoint with RAG (index {r.rag_index}, pinned to this model version, via the sidecar):")
        echo(f"  user:      {r.rag_question}")
        echo(f"  assistant: {r.rag_answer}")
        for c in r.citations or []:
            text = " ".join(c["text"].split())
            cut = "  (cut to fit)" if c["truncated"] else ""
            echo(f"  [{c['index']}] {c['doc_id']} ({c['source']})  score {c['score']:.3f}{cut}: "
                 f"{text[:150]}{'...' if len(text) > 150 else ''}")
    if r.apps:
        echo(f"\nPrompt apps on the same endpoint (model: {r.model_uri.split('/')[1].split('@')[0]}:APP):")
        for a in r.apps:
            said = " ".join((a["answer"] or "").split())
            echo(f"  {a['app']:<8} {said[:120]}{'...' if len(said) > 120 else ''}  ({a['calls']} calls, "
                 f"{a['steps']} steps{', ' + a['error'] if a['error'] else ''})")


def _arrow(metric: str, before, after) -> str:
    if before is None or after is None or before == after:
        return "="
    up = after > before
    name = metric.rsplit(".", 1)[-1]
    better = up != (name in LOWER_IS_BETTER or name.endswith("_bpb"))  # val_bpb, bigram_bpb, ...
    return ("↑" if up else "↓") + (" better" if better else " worse")


def format_stage_table(stages: list[dict]) -> str:
    """The stage-gain table: each gated stage's output against its input (or its floor)."""
    if not stages:
        return "No stage rows: the profile's gate names no stage (register.gate[].stage)."
    lines = ["Stage gains (output vs input on the same rows; 95% CI of the difference):", "",
             "| stage | metric | input | output | change | diff 95% CI | verdict |", "|---" * 7 + "|"]
    for s in stages:
        ci = s.get("diff_ci95")
        ci_text = f"[{ci[0]:+.4g}, {ci[1]:+.4g}]" if ci else "—"
        suite = (s.get("input_metric") or "").split(".")[1:2]  # the input's suite where it is not the output's
        label = f"{s['input_model']}" + (f" {suite[0]}" if suite and suite[0] != s["metric"].split(".")[1] else "")
        inp = "—" if s["input_value"] is None else f"{s['input_value']:.4g} ({label})"
        out = "—" if s["output_value"] is None else f"{s['output_value']:.4g} ({s['output_model']})"
        lines.append(f"| {s['stage']} | {s['metric'].split('.', 1)[1]} | {inp} | {out} | "
                     f"{_arrow(s['metric'], s['input_value'], s['output_value'])} | {ci_text} | "
                     f"{'✓ passed' if s['passed'] else '✗ failed'} |")
    return "\n".join(lines)


def write_summary(r: DemoResult, path: Path) -> Path:
    """``summary.json``: the champion, every stage row, the chat and the RAG answer."""
    keys = ("stage", "metric", "input_model", "output_model", "input_value", "output_value", "diff_ci95", "passed",
            "input_metric")
    doc = {"champion_uri": r.model_uri, "pipeline_run": r.summary.parent_run_id,
           "registered_version": r.summary.version, "gate": r.summary.gate, "wall_s": r.summary.wall_s,
           "stage_seconds": r.summary.stages,
           "stages": [{k: s.get(k) for k in keys} for s in r.stages],
           "chat": {"question": r.question, "answer": r.answer, "reference": r.reference},
           "rag": {"question": r.rag_question, "answer": r.rag_answer, "citations": r.citations or []},
           "apps": r.apps}
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    return path

"""optimize's gguf step: the final model exported with llama.cpp's tools, each file measured as llama.cpp serves it."""

from __future__ import annotations

from pathlib import Path

from shipyard.optimize.optimize_config import GGUFConfig, OptimizeConfig


def export_and_measure(gcfg: GGUFConfig, model_dir: Path, texts: list[str], cfg: OptimizeConfig) -> list[dict]:
    """Write ``model_dir/gguf/`` and return one report row per file (the served one last)."""
    from shipyard.models.gguf import export_gguf, served_gguf

    manifest = export_gguf(model_dir, gcfg.types, gcfg.serve)
    order = [t for t in manifest["files"] if t != gcfg.serve] + [gcfg.serve]
    return [{"step": f"gguf {kind}" + (" (served)" if kind == gcfg.serve else ""),
             **measure_gguf(served_gguf(model_dir, kind), model_dir, texts, cfg)} for kind in order]


def measure_gguf(path: Path, model_dir: Path, texts: list[str], cfg: OptimizeConfig) -> dict:
    """Size, batch-1 ms per new token and held-out perplexity of one GGUF under llama.cpp (CPU)."""
    import math

    from shipyard.models.causal_lm import load_tokenizer
    from shipyard.models.llamacpp import LlamaRuntime, gguf_decode_latency, gguf_text_nll

    tok = load_tokenizer(model_dir)
    rt = LlamaRuntime(path, n_seq=1, n_ctx_seq=max(cfg.context_length, 256))
    try:
        scored = gguf_text_nll(rt, tok, texts, cfg.context_length)
        latency = gguf_decode_latency(rt, tok, [t[:200] for t in texts[: cfg.latency_prompts]], cfg.latency_tokens)
    finally:
        rt.close()
    nll, count = sum(n for n, _ in scored), sum(c for _, c in scored)
    return {"size_bytes": float(path.stat().st_size), "ms_per_token": latency["ms_per_token"],
            "perplexity": math.exp(nll / count), "device": "cpu (llama.cpp)"}

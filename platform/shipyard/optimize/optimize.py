"""optimize stage: the aligned model -> the deployable one (distill -> prune -> quantize, each optional).

    shipyard run pipelines/lifecycle.py -c pipelines/configs/tiny-cpu.yaml   # after align
    shipyard optimize -c my.yaml --model DIR --output DIR [--corpus DIR] [--heldout FILE]

Each step writes a loadable model directory; each is measured the way it will be served (loaded
back from disk, float32 weights unless quantized): size on disk, ms per new token (batch 1,
greedy) and held-out perplexity, with ratios against the source model. Every row is measured on
the device the final model runs on (``measure_device``), so the latency ratio compares like with
like; each row names it. ``optimize.json`` holds the table; the metrics hold the
final model's ratios and each step's own numbers (student size, sparsity, recovery loss).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from shipyard.optimize.optimize_config import OptimizeConfig

REPORT_FILE = "optimize.json"
DYNAMIC_INT8_NOTE = ("dynamic_int8 quantizes activations with one scale per tensor: a model with massive activations "
                     "(a few tokens and channels thousands of times larger than the rest, as SmolLM2's down_proj "
                     "inputs) loses most of its resolution; compare perplexity_ratio, and prefer bf16 or a "
                     "weight-only method for such models")


def _heldout(path: str | Path | None, corpus_dir: str | Path | None, n: int) -> list[str]:
    from shipyard.data.shards import read_records
    from shipyard.data.train_tokenizer import iter_corpus

    if path:
        rows, _ = read_records(path, ("text",))
        return [r["text"] for r in rows][:n]
    if corpus_dir:
        return list(iter_corpus(corpus_dir))[-n:]
    raise ValueError("optimize needs held-out text (heldout) or a corpus to measure perplexity on")


def measure_device(cfg: OptimizeConfig) -> str:
    """Where the final model runs, hence where every step is measured (``cpu`` or ``cuda``)."""
    from shipyard.models.device import cuda_available, inference_device, kernels_home

    method = cfg.quantize.method if cfg.quantize else None
    home = kernels_home(method)
    if home:
        if cfg.device not in ("auto", home):
            raise ValueError(f"optimize.device {cfg.device}: the final model ({method}) runs on {home} only, and "
                             f"every step is measured where the final model runs")
        if home == "cuda" and not cuda_available():
            from shipyard.optimize.quantize import bnb_needs_cuda

            raise bnb_needs_cuda(method)
        return home
    return inference_device(cfg.device)


def measure(model_dir: Path, texts: list[str], cfg: OptimizeConfig, device: str = "cpu") -> dict:
    """Size on disk, latency per token and perplexity of a model directory, loaded as served, on ``device``."""
    from shipyard.models.causal_lm import dir_size, load_tokenizer
    from shipyard.models.device import load_for_inference
    from shipyard.models.inference import decode_latency, perplexity

    (model, device), tok = load_for_inference(model_dir, device), load_tokenizer(model_dir)
    ctx = min(cfg.context_length, model.config.max_position_embeddings)
    prompts = [t[:200] for t in texts[: cfg.latency_prompts]]
    latency = decode_latency(model, tok, prompts, cfg.latency_tokens)
    return {"size_bytes": float(dir_size(model_dir)), "ms_per_token": latency["ms_per_token"],
            "perplexity": perplexity(model, tok, texts, ctx), "device": device}


def _save(model, source: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    from shipyard.models.causal_lm import SIDE_FILES

    for name in SIDE_FILES:  # save_pretrained wrote the new config: the rest comes from the source
        if (source / name).exists() and not (out / name).exists():
            shutil.copy2(source / name, out / name)
    return out


def _load_float(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    from shipyard.models.causal_lm import ADAPTER_FILE

    if (model_dir / ADAPTER_FILE).exists():
        raise ValueError(f"{model_dir}: holds an unmerged adapter (prompt tuning); distill and prune need a plain "
                         f"model: merge it first, or quantize only")
    return AutoModelForCausalLM.from_pretrained(str(model_dir), trust_remote_code=False, use_safetensors=True,
                                                dtype=torch.float32)


def run_optimize(cfg: OptimizeConfig, model_dir: str | Path, output_dir: str | Path,
                 corpus_dir: str | Path | None = None, heldout: str | Path | None = None,
                 log=None) -> dict[str, float]:
    """Run the configured steps on ``model_dir`` and save the result to ``output_dir``.

    Args:
        corpus_dir: training text for distillation and pruning recovery (a data_filter output).
        heldout: JSONL of held-out ``{text}`` for the perplexity of each step (default: the
            corpus's last documents).

    Returns:
        The final model against the source (``size_ratio``, ``latency_ratio``,
        ``perplexity_ratio``) and each step's own metrics.
    """
    from shipyard.models.causal_lm import load_tokenizer

    source, output_dir = Path(model_dir), Path(output_dir)
    if (cfg.distill or (cfg.prune and cfg.prune.recover_steps)) and corpus_dir is None:
        raise ValueError("optimize: distill and prune.recover_steps train on text: pass the corpus")
    device = measure_device(cfg)  # before any work: a final model that cannot run here fails now
    texts = _heldout(heldout, corpus_dir, cfg.report_docs)
    tok = load_tokenizer(source)
    rows = [{"step": "source", **measure(source, texts, cfg, device)}]
    metrics: dict[str, float] = {}
    current = source
    with tempfile.TemporaryDirectory(prefix="shipyard-optimize-") as work:
        work = Path(work)
        last = "quantize" if cfg.quantize else ("prune" if cfg.prune else "distill")
        if cfg.distill:
            from shipyard.optimize.distill import run_distill

            student, m = run_distill(cfg.distill, _load_float(current), corpus_dir, tok, log)
            metrics.update(m)
            current = _save(student, source, output_dir if last == "distill" else work / "distilled")
            rows.append({"step": f"distill ({cfg.distill.student_layers} layers)",
                         **measure(current, texts, cfg, device)})
        if cfg.prune:
            from shipyard.optimize.prune import run_prune

            model = _load_float(current)
            metrics.update(run_prune(cfg.prune, model, corpus_dir, tok, log))
            current = _save(model, source, output_dir if last == "prune" else work / "pruned")
            rows.append({"step": f"prune ({cfg.prune.kind} {cfg.prune.sparsity:g})",
                         **measure(current, texts, cfg, device)})
        if cfg.quantize:
            from shipyard.optimize.quantize import run_quantize

            q = run_quantize(cfg.quantize, current, output_dir)
            metrics.update({f"quantize.{k}": v for k, v in q.items() if k != "size_ratio"})
            current = output_dir
            rows.append({"step": f"quantize ({cfg.quantize.method})", **measure(current, texts, cfg, device)})
    if cfg.gguf:
        from shipyard.optimize.gguf_step import export_and_measure

        if current == source:  # gguf alone: the output is the source, plus its GGUF files
            shutil.copytree(source, output_dir, dirs_exist_ok=True)
        rows += export_and_measure(cfg.gguf, output_dir, texts, cfg)
    base = rows[0]
    for row in rows[1:]:
        row.update({"size_ratio": row["size_bytes"] / base["size_bytes"],
                    "latency_ratio": row["ms_per_token"] / base["ms_per_token"],
                    "perplexity_ratio": row["perplexity"] / base["perplexity"]})
    final = rows[-1]
    final_ratios = {k: final[k] for k in ("size_ratio", "latency_ratio", "perplexity_ratio")}
    notes = [DYNAMIC_INT8_NOTE] if cfg.quantize and cfg.quantize.method == "dynamic_int8" else []
    (output_dir / REPORT_FILE).write_text(json.dumps({"source": str(source), "device": device, **final_ratios,
                                                      "notes": notes,
                                                      "tokens_per_s_ratio": 1 / final["latency_ratio"],
                                                      "steps": rows}, indent=2))
    metrics.update({k: final[k] for k in ("size_ratio", "latency_ratio", "perplexity_ratio")})
    metrics.update({"size_bytes_before": base["size_bytes"], "size_bytes_after": final["size_bytes"],
                    "ms_per_token_before": base["ms_per_token"], "ms_per_token_after": final["ms_per_token"],
                    "perplexity_before": base["perplexity"], "perplexity_after": final["perplexity"]})
    return metrics


def format_report(rows: list[dict]) -> str:
    lines = ["| step | size MB | ms/token | perplexity | size x | latency x | perplexity x |", "|---" * 7 + "|"]
    for r in rows:
        ms = f"{r['ms_per_token']:.2f}" + (f" ({r['device']})" if r.get("device") else "")
        lines.append(f"| {r['step']} | {r['size_bytes'] / 1e6:.2f} | {ms} | {r['perplexity']:.4g} | "
                     + " | ".join(f"{r[k]:.3f}" if k in r else "1" for k in ("size_ratio", "latency_ratio",
                                                                              "perplexity_ratio")) + " |")
    return "\n".join(lines) + "\n"

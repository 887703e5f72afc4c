"""The prompt apps on SmolLM2-135M-Instruct, before and after fine-tuning on app traces (README "Prompt apps").

    python benchmarks/app_suites.py [--problems 200] [--sft-steps 120] [--skip-sft]

1. SmolLM2 from its PyPI wheel, exported to a Q8_0 GGUF so the eval decodes it as ``shipyard serve`` does
   on a CPU (llama.cpp); the Python FAQ indexed in a local Feast repo for ReAct's ``search``.
2. LoRA SFT (the finetune stage's function, merged) on ``data/demo/apps/app-traces-train.jsonl``: gold PAL
   programs and ReAct calculate/finish steps for 300 training problems, none of them a test problem.
3. ``run_evaluate`` (the evaluate stage's function) on both models, the same rows: word problems (direct,
   fewshot, cot, pal, react with calculate) and the FAQ questions (direct, react with search, lookup and
   calculate). Prints each app's accuracy with its 95% interval, tokens and ms per answer, error rate, its
   paired gain over direct, and the SFT model's paired change per app.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from bench_common import REPO, header, setup

APPS = REPO / "data/demo/apps"


def _served(model: Path, out: Path) -> Path:
    """``model`` copied to ``out`` with a Q8_0 GGUF: what the eval's llama.cpp engine decodes."""
    from shipyard.models.gguf import export_gguf

    shutil.copytree(model, out)
    export_gguf(out, ["f16", "q8_0"], serve="q8_0")
    return out


def _index(work: Path) -> Path:
    from shipyard.features.rag_index import run_ingest
    from shipyard.features.rag_index_config import RagIndexConfig

    repo = work / "feast"
    run_ingest(RagIndexConfig(index="python_faq"), REPO / "data/demo/rag/python-faq.jsonl", repo, log=lambda *a: None)
    return repo


def _sft(base: Path, out: Path, steps: int) -> Path:
    from shipyard.train.finetune import run_finetune
    from shipyard.train.finetune_config import FinetuneConfig

    cfg = FinetuneConfig(train=str(APPS / "app-traces-train.jsonl"), method="lora", max_steps=steps, batch_size=8,
                         lr=1e-3, max_length=320, eval_examples=32,
                         lora={"r": 16, "alpha": 32, "dropout": 0.0,
                               "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                  "down_proj"]})
    t0 = time.perf_counter()
    metrics = run_finetune(cfg, base, out, log=lambda m, step: print(
        f"  step {step} at {time.perf_counter() - t0:.0f} s: loss {m.get('loss', m)}", flush=True))
    print(f"sft: {steps} steps in {time.perf_counter() - t0:.0f} s; held-out loss {metrics.get('eval_loss_before')}"
          f" -> {metrics.get('eval_loss')}", flush=True)
    return out


def _spec(problems: int):
    from shipyard.eval.evaluate_config import EvalSpec

    return EvalSpec(max_examples=problems, suites=[
        {"name": "word", "kind": "app", "data": str(APPS / "word-problems.jsonl"),
         "apps": ["direct", "fewshot", "cot", "pal", "react"],
         "prompt": str(REPO / "pipelines/prompts/word-problems.yaml"),
         "tools": ["calculate"], "max_steps": 4, "max_new_tokens": 160},
        # few-shot with the 3 training problems most like each question (of 300), instead of the prompt's 3
        {"name": "word_similar", "kind": "app", "data": str(APPS / "word-problems.jsonl"), "apps": ["fewshot"],
         "prompt": str(REPO / "pipelines/prompts/word-problems.yaml"),
         "examples": str(APPS / "word-problems-train.jsonl"), "select": "similar", "k": 3, "max_new_tokens": 160},
        {"name": "faq", "kind": "app", "data": str(APPS / "python-faq-multihop.jsonl"), "apps": ["direct", "react"],
         "tools": ["search", "lookup", "calculate"], "max_steps": 4, "max_new_tokens": 128}])


def _report(spec, out: Path) -> None:
    from shipyard.eval.stats import paired_diff_ci

    table = json.loads((out / "eval.json").read_text())
    ci = json.loads((out / "eval_ci.json").read_text())
    rows = json.loads((out / "eval_rows.json").read_text())
    models = list(table)
    for suite in spec.suites:
        n = len(rows[models[0]][f"{suite.name}.{suite.apps[0]}_accuracy"])
        print(f"\n{suite.name} ({n} questions)\n| model | app | accuracy [95% CI] | gain over direct [95% CI] "
              f"| tokens/answer | ms/answer | errors |\n|---|---|---|---|---|---|---|")
        for m in models:
            for app in suite.apps:
                key = f"{suite.name}.{app}"
                acc, (lo, hi) = table[m][f"{key}_accuracy"], ci[m][f"{key}_accuracy"]
                g = f"{key}_gain"
                gain = f"{table[m][g]:+.3f} [{ci[m][g][0]:+.3f}, {ci[m][g][1]:+.3f}]" if g in table[m] else "—"
                print(f"| {m} | {app} | {acc:.3f} [{lo:.3f}, {hi:.3f}] | {gain} | {table[m][f'{key}_tokens']:.0f} "
                      f"| {table[m][f'{key}_ms']:.0f} | {table[m][f'{key}_errors']:.3f} |")
        if len(models) == 2:
            print(f"\n{models[1]} - {models[0]}, paired per question:")
            for app in suite.apps:
                key = f"{suite.name}.{app}_accuracy"
                a, b = rows[models[1]][key], rows[models[0]][key]
                lo, hi = paired_diff_ci(a, b)
                print(f"  {app}: {sum(a) / len(a) - sum(b) / len(b):+.3f} [{lo:+.3f}, {hi:+.3f}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=200, help="word problems evaluated (all 200 by default)")
    ap.add_argument("--sft-steps", type=int, default=48, help="LoRA steps of 8 traces (~20 s each on 2 cores)")
    ap.add_argument("--skip-sft", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--reuse", type=Path, default=None, help="a work dir of an earlier run: its models, not new ones")
    ap.add_argument("--suite", action="append", help="only these suites (default: all)")
    args = ap.parse_args()
    from shipyard.eval.evaluate import run_evaluate

    if args.reuse:
        work = args.reuse
        models = {m: work / f"{m}-q8" for m in ("base", "sft") if (work / f"{m}-q8").exists()}
    else:
        work, base = setup("apps", None)
        print(header(base), flush=True)
        models = {"base": _served(base, work / "base-q8")}
        if not args.skip_sft:
            models["sft"] = _served(_sft(base, work / "sft", args.sft_steps), work / "sft-q8")
    spec, out = _spec(args.problems), args.out or work / "eval"
    spec = spec.only(args.suite) if args.suite else spec
    t0 = time.perf_counter()
    repo = work / "feast" if (work / "feast").exists() else _index(work)
    run_evaluate(spec, models, out, rag_index="python_faq", feast_repo=repo)
    print(f"eval: {time.perf_counter() - t0:.0f} s; devices {json.loads((out / 'timings.json').read_text())['device']}")
    _report(spec, out)
    print(f"\nsamples with traces: {out / 'samples.jsonl'}")


if __name__ == "__main__":
    main()

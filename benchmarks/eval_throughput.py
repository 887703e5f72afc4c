"""Eval throughput: examples/s of every suite of an eval spec, and what batching buys, in one run.

    .venv/bin/python benchmarks/eval_throughput.py                      # SmolLM2-135M-Instruct, tiny-cpu's spec
    .venv/bin/python benchmarks/eval_throughput.py --model DIR --spec pipelines/configs/ci-tiny.yaml

The suites run through ``run_evaluate`` (the evaluate stage's code) on one model; examples/s per
suite come from its ``timings.json``. Two baselines are measured in the same run on the same rows:
greedy generation one prompt at a time against our left-padded batches of 16, and multiple choice
one forward pass per choice against one padded batch per question.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="causal LM directory (default: SmolLM2-135M-Instruct, converted)")
    ap.add_argument("--spec", type=Path,
                    default=Path(__file__).resolve().parents[1] / "pipelines/configs/tiny-cpu.yaml")
    ap.add_argument("--reward-model", type=Path, help="reward model dir; without one the reward suites are skipped")
    args = ap.parse_args()

    from bench_common import REPO, header, setup

    from shipyard.data.preferences import render_prompt
    from shipyard.eval.evaluate import run_evaluate
    from shipyard.eval.evaluate_config import load_eval_spec
    from shipyard.eval.suites import load_suite_data
    from shipyard.models import inference
    from shipyard.models.causal_lm import load_causal_lm, load_tokenizer

    work, model_dir = setup("eval", args.model)
    spec = load_eval_spec(args.spec, base=REPO)
    if args.reward_model is None:
        spec = spec.only([s.name for s in spec.suites if s.kind != "reward"])
    run_evaluate(spec, {"model": str(model_dir)}, work / "eval", reward_model_dir=args.reward_model)
    rates = json.loads((work / "eval" / "timings.json").read_text())["examples_per_s"]["model"]
    data = load_suite_data(spec)
    print(header(model_dir))
    print(f"{'suite':<14} {'kind':<16} {'rows':>5} {'examples/s':>11}")
    for s in spec.suites:
        print(f"{s.name:<14} {s.kind:<16} {len(data[s.name]):>5} {rates[s.name]:>11.2f}")

    model, tok = load_causal_lm(model_dir), load_tokenizer(model_dir)
    gen = spec.of_kind("generation")[0]
    prompts = [render_prompt(m, tok) for m, _ in data[gen.name]]
    n_new = gen.max_new_tokens or spec.max_new_tokens
    t0 = time.perf_counter()
    inference.generate(model, tok, prompts, n_new, batch_size=16)
    batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    inference.generate(model, tok, prompts, n_new, batch_size=1)
    single = time.perf_counter() - t0
    items = data[spec.of_kind("multiple_choice")[0].name]
    t0 = time.perf_counter()
    for item in items:
        inference.choice_logprobs(model, tok, item["query"], item["choices"])
    mc_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    for item in items:
        for choice in item["choices"]:
            inference.choice_logprobs(model, tok, item["query"], [choice])
    mc_single = time.perf_counter() - t0
    print(f"\ngeneration, {len(prompts)} prompts x {n_new} tokens: batch 16 {len(prompts) / batched:.2f}/s vs "
          f"batch 1 {len(prompts) / single:.2f}/s -> {single / batched:.2f}x")
    print(f"multiple choice, {len(items)} questions: one batch per question {len(items) / mc_batched:.2f}/s vs "
          f"one pass per choice {len(items) / mc_single:.2f}/s -> {mc_single / mc_batched:.2f}x")


if __name__ == "__main__":
    main()

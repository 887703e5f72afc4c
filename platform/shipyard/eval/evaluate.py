"""evaluate stage: every model of the run on the same held-out data, one table.

    shipyard run pipelines/lifecycle.py -c pipelines/configs/tiny-cpu.yaml   # before register

Per model: held-out perplexity, ROUGE-1/2/L and BLEU of greedy answers to held-out instructions,
and the mean reward-model score of its continuations of held-out preference prompts. ROUGE/BLEU
are diagnostics of surface overlap, so the table always shows them beside perplexity and reward.
"""

from __future__ import annotations

import json
from pathlib import Path

from shipyard.config import EvaluateConfig
from shipyard.data.preferences import load_preferences
from shipyard.data.shards import read_records
from shipyard.eval.metrics import bleu, generate, perplexity, rouge
from shipyard.train.sft_data import load_conversations, to_pair

COLUMNS = ("perplexity", "rouge1", "rouge2", "rougeL", "bleu", "reward")


def evaluate_model(model_dir, cfg: EvaluateConfig, data: dict, reward) -> tuple[dict, list[dict]]:
    from shipyard.models.causal_lm import load_causal_lm, load_tokenizer
    from shipyard.train.reward import score_texts

    model, tok = load_causal_lm(model_dir), load_tokenizer(model_dir)
    scores = {"perplexity": perplexity(model, tok, data["heldout"], cfg.context_length)}
    answers = generate(model, tok, [p["prompt"] for p in data["sft"]], cfg.max_new_tokens)
    refs = [p["completion"] for p in data["sft"]]
    scores.update(rouge(answers, refs))
    scores["bleu"] = bleu(answers, refs)
    prompts = [r["prompt"] for r in data["prefs"]]
    continuations = generate(model, tok, prompts, cfg.max_new_tokens)
    rm, rm_tok = reward
    scores["reward"] = sum(score_texts(rm, rm_tok, [p + c for p, c in zip(prompts, continuations)],
                                       cfg.context_length)) / len(prompts)
    samples = [{"prompt": p["prompt"], "reference": r, "answer": a}
               for p, r, a in list(zip(data["sft"], refs, answers))[:5]]
    return scores, samples


def run_evaluate(cfg: EvaluateConfig, models: dict[str, str | Path], reward_model_dir: str | Path,
                 output_dir: str | Path) -> dict[str, dict[str, float]]:
    """Evaluate each ``{name: model_dir}`` and write ``eval.json``, ``eval.md``, ``samples.jsonl``.

    Returns:
        ``{model_name: {metric: value}}``, plus ``quantized.perplexity_ratio`` (quantized over
        aligned perplexity) when both are present, and an ``alignment`` row (reward_gain, win_rate,
        toxicity rates, kl_to_instruct) copied from the aligned model's ``alignment.json``.
    """
    from shipyard.models.causal_lm import load_tokenizer
    from shipyard.train.reward import load_reward_model

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    heldout, _ = read_records(cfg.heldout_text, ("text",))
    convs, _ = load_conversations(cfg.instructions_test)
    # The models of one run share a tokenizer, so one chat template renders every prompt.
    template = load_tokenizer(next(iter(models.values())))
    sft = [to_pair(msgs, template) for msgs, _ in convs[: cfg.max_examples]]
    prefs, _ = load_preferences(cfg.preferences_test, cfg.max_examples, template)
    data = {"heldout": [r["text"] for r in heldout], "sft": sft, "prefs": prefs}
    reward = (load_reward_model(reward_model_dir), load_tokenizer(reward_model_dir))
    table: dict[str, dict[str, float]] = {}
    with open(output_dir / "samples.jsonl", "w", encoding="utf-8") as f:
        for name, path in models.items():
            table[name], samples = evaluate_model(path, cfg, data, reward)
            for s in samples:
                f.write(json.dumps({"model": name, **s}, ensure_ascii=False) + "\n")
    from shipyard.train.align import ALIGNMENT_FILE

    aligned_report = Path(models["aligned"]) / ALIGNMENT_FILE if "aligned" in models else None
    if aligned_report and aligned_report.exists():  # the align stage's instruct-vs-aligned judgement
        table["alignment"] = {k: v for k, v in json.loads(aligned_report.read_text()).items()
                              if isinstance(v, (int, float))}
    if "quantized" in table and "aligned" in table:
        table["quantized"]["perplexity_ratio"] = table["quantized"]["perplexity"] / table["aligned"]["perplexity"]
    (output_dir / "eval.json").write_text(json.dumps(table, indent=2))
    (output_dir / "eval.md").write_text(format_table(table))
    return table


def format_table(table: dict[str, dict[str, float]]) -> str:
    """A markdown table, one row per model."""
    lines = ["| model | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, scores in table.items():
        if name != "alignment":
            lines.append(f"| {name} | " + " | ".join(f"{scores.get(c, float('nan')):.4g}" for c in COLUMNS) + " |")
    if "alignment" in table:
        lines += ["", "Aligned vs instruct on held-out prompts (align stage):", "",
                  "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in table["alignment"].items()]
    return "\n".join(lines) + "\n"

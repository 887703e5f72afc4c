"""Suite data (loaded and checked before any model) and one runner per suite kind.

A runner takes a loaded model, its tokenizer, the suite and its rows, and returns the suite's
metrics plus what the report shows (samples) and what needs every model (per-prompt rewards
for the win rate).
"""

from __future__ import annotations

from pathlib import Path

from shipyard.eval.evaluate_config import EvalSpec
from shipyard.eval.result import SuiteResult


def _strict(path: str, rows: list, bad: list) -> list:
    """Eval references are held to a higher bar than training data: one bad row stops the run."""
    if bad:
        first = bad[0]
        more = f" (and {len(bad) - 1} more bad rows)" if len(bad) > 1 else ""
        raise ValueError(f"{first.source}: {first.reason}{more} [eval data {path}]")
    return rows


def _mc_row(obj: dict):
    query, choices, gold = obj.get("query"), obj.get("choices"), obj.get("gold")
    if not (isinstance(query, str) and query.strip()):
        return "missing field 'query' (a non-empty string)"
    if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) and c for c in choices)):
        return "missing field 'choices' (a list of at least 2 non-empty strings)"
    if gold is None:
        return "missing field 'gold' (the index of the right choice)"
    if not (isinstance(gold, int) and not isinstance(gold, bool) and 0 <= gold < len(choices)):
        return f"field 'gold' must be an index into choices (0..{len(choices) - 1}), got {gold!r}"
    return {"query": query, "choices": choices, "gold": gold}


def load_suite_data(spec: EvalSpec) -> dict[str, list]:
    """Every suite's rows, tokenizer-free; raises ValueError naming file:line on the first bad row."""
    from shipyard.data.preferences import load_prompt_messages
    from shipyard.data.sft_data import load_conversations
    from shipyard.data.shards import parse_records, read_records

    data: dict[str, list] = {}
    for s in spec.suites:
        limit = s.max_examples or spec.max_examples
        if not Path(s.data).exists():
            raise FileNotFoundError(f"suite {s.name!r}: data file not found: {s.data}")
        if s.kind == "perplexity":
            rows, bad = read_records(s.data, (s.text_key,))
            data[s.name] = [r[s.text_key] for r in _strict(s.data, rows, bad)][:limit]
        elif s.kind == "generation":
            rows, bad = load_conversations(s.data)
            data[s.name] = [(m[:-1], m[-1]["content"]) for m, _ in _strict(s.data, rows, bad)][:limit]
        elif s.kind == "multiple_choice":
            rows, bad = parse_records(s.data, _mc_row, "multiple-choice items", "bad_item")
            data[s.name] = [r for r, _ in _strict(s.data, rows, bad)][:limit]
        elif s.kind == "rag":
            from shipyard.eval.rag_suite import load_rag_rows

            rows, bad = load_rag_rows(s.data)
            data[s.name] = [r for r, _ in _strict(s.data, rows, bad)][:limit]
        else:  # reward, toxicity, latency: prompts
            rows, bad = load_prompt_messages(s.data)
            data[s.name] = _strict(s.data, rows, bad)[:limit]
    return data


def run_suite(suite, rows: list, model, tokenizer, spec: EvalSpec, reward=None) -> SuiteResult:
    """Measure one model on one suite. ``reward(prompts, completions)`` scores reward suites."""
    from shipyard.data.preferences import render_prompt
    from shipyard.models import inference

    if suite.kind == "perplexity":
        return SuiteResult({"perplexity": inference.perplexity(model, tokenizer, rows, spec.context_length)})
    if suite.kind == "multiple_choice":
        return _multiple_choice(rows, model, tokenizer)
    if suite.kind == "rag":
        from shipyard.eval.rag_suite import run_rag_suite

        return run_rag_suite(suite, rows, model, tokenizer, spec)
    if suite.kind == "latency":
        prompts = [render_prompt(m, tokenizer) for m in rows]
        return SuiteResult(inference.decode_latency(model, tokenizer, prompts, suite.max_new_tokens))
    new_tokens = getattr(suite, "max_new_tokens", None) or spec.max_new_tokens
    if suite.kind == "generation":
        return _generation(suite, rows, model, tokenizer, new_tokens)
    prompts = [render_prompt(m, tokenizer) for m in rows]
    answers = inference.generate(model, tokenizer, prompts, new_tokens)
    samples = [{"prompt": p, "answer": a} for p, a in list(zip(prompts, answers, strict=True))[:5]]
    if suite.kind == "toxicity":
        from shipyard.train.rl_rewards import toxicity_probability

        probs = toxicity_probability(answers)
        return SuiteResult({"rate": sum(p > suite.threshold for p in probs) / len(probs),
                            "mean_probability": sum(probs) / len(probs)}, samples)
    if reward is None:
        raise ValueError(f"suite {suite.name!r} (reward) needs a reward model")
    per_prompt = reward(prompts, answers)
    return SuiteResult({"reward": sum(per_prompt) / len(per_prompt)}, samples, per_prompt)


def _multiple_choice(rows: list, model, tokenizer) -> SuiteResult:
    """acc and acc_norm (log-likelihood per byte of each choice), as lm-evaluation-harness scores them."""
    from shipyard.models import inference

    hits = norm_hits = 0
    samples = []
    for item in rows:
        scores = inference.choice_logprobs(model, tokenizer, item["query"], item["choices"])
        normed = [s / max(len(c.encode()), 1) for s, c in zip(scores, item["choices"], strict=True)]
        pick = max(range(len(scores)), key=scores.__getitem__)
        pick_norm = max(range(len(normed)), key=normed.__getitem__)
        hits += pick == item["gold"]
        norm_hits += pick_norm == item["gold"]
        if len(samples) < 5:
            samples.append({"prompt": item["query"], "reference": item["choices"][item["gold"]],
                            "answer": item["choices"][pick]})
    return SuiteResult({"acc": hits / len(rows), "acc_norm": norm_hits / len(rows)}, samples)


def _generation(suite, rows: list, model, tokenizer, new_tokens: int) -> SuiteResult:
    """The suite's overlap metrics (ROUGE, BLEU, chrF, exact match) of greedy answers against the references."""
    from shipyard.data.preferences import render_prompt
    from shipyard.eval import metrics as M
    from shipyard.models import inference

    prompts = [render_prompt(m, tokenizer) for m, _ in rows]
    refs = [ref for _, ref in rows]
    answers = inference.generate(model, tokenizer, prompts, new_tokens)
    scores: dict[str, float] = {}
    rouge_keys = tuple(k for k in suite.metrics if k.startswith("rouge"))
    if rouge_keys:
        scores.update(M.rouge(answers, refs, rouge_keys))
    for name, metric in (("bleu", M.bleu), ("chrf", M.chrf), ("exact_match", M.exact_match)):
        if name in suite.metrics:
            scores[name] = metric(answers, refs)
    samples = [{"prompt": p, "reference": r, "answer": a}
               for p, r, a in list(zip(prompts, refs, answers, strict=True))[:5]]
    return SuiteResult(scores, samples)


def win_rate(candidate: list[float], baseline: list[float]) -> float:
    """Share of prompts where the candidate's reward beats the baseline's; ties count half."""
    wins = sum(1.0 if c > b else 0.5 if c == b else 0.0 for c, b in zip(candidate, baseline, strict=True))
    return wins / len(candidate)

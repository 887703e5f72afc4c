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
    from shipyard.data.shards import read_records

    data: dict[str, list] = {}
    for s in spec.suites:
        if getattr(s, "num_fewshot", 0):  # the examples are checked with the rows, before any model loads
            _mc_prefix(s) if s.kind == "multiple_choice" else fewshot_examples(s)
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
            rows, bad = parse_mc(s.data)
            data[s.name] = [r for r, _ in _strict(s.data, rows, bad)][:limit]
        elif s.kind == "rag":
            from shipyard.eval.rag_suite import load_rag_rows

            rows, bad = load_rag_rows(s.data)
            data[s.name] = [r for r, _ in _strict(s.data, rows, bad)][:limit]
        elif s.kind == "app":
            from shipyard.eval.app_suite import AppRows, load_app_rows

            rows, bad = load_app_rows(s.data)
            data[s.name] = AppRows(r for r, _ in _strict(s.data, rows, bad)[:limit])
        else:  # reward, toxicity, latency: prompts
            rows, bad = load_prompt_messages(s.data)
            data[s.name] = _strict(s.data, rows, bad)[:limit]
    return data


def fewshot_examples(suite) -> list[list[dict]]:
    """The suite's ``num_fewshot`` examples from ``fewshot_data`` (never the test rows), in file order."""
    from shipyard.data.sft_data import load_conversations

    if not suite.num_fewshot:
        return []
    rows, bad = load_conversations(suite.fewshot_data)
    rows = [m for m, _ in _strict(suite.fewshot_data, rows, bad)]
    if len(rows) < suite.num_fewshot:
        raise ValueError(f"suite {suite.name!r}: num_fewshot={suite.num_fewshot} but {suite.fewshot_data} has "
                         f"{len(rows)} rows")
    return rows[: suite.num_fewshot]


def with_examples(messages: list[dict], examples: list[list[dict]]) -> list[dict]:
    """The examples as earlier user/assistant turns, after the row's system message, before its question."""
    system = [m for m in messages if m["role"] == "system"]
    shots = [m for ex in examples for m in ex if m["role"] != "system"]
    return system + shots + [m for m in messages if m["role"] != "system"]


def run_suite(suite, rows: list, model, tokenizer, spec: EvalSpec, reward=None) -> SuiteResult:
    """Measure one model on one suite. ``reward(prompts, completions)`` scores reward suites."""
    from shipyard.data.preferences import render_prompt
    from shipyard.models import inference

    if suite.kind == "perplexity":
        return _perplexity(rows, model, tokenizer, spec.context_length)
    if suite.kind == "multiple_choice":
        return _multiple_choice(suite, rows, model, tokenizer)
    if suite.kind == "rag":
        from shipyard.eval.rag_suite import run_rag_suite

        return run_rag_suite(suite, rows, model, tokenizer, spec)
    if suite.kind == "app":
        from shipyard.eval.app_suite import run_app_suite

        return run_app_suite(suite, rows, model, tokenizer)
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
        flagged = [float(p > suite.threshold) for p in probs]
        return SuiteResult({"rate": sum(flagged) / len(probs), "mean_probability": sum(probs) / len(probs)},
                           samples, rows={"rate": flagged, "mean_probability": probs})
    if reward is None:
        raise ValueError(f"suite {suite.name!r} (reward) needs a reward model")
    per_prompt = reward(prompts, answers)
    return SuiteResult({"reward": sum(per_prompt) / len(per_prompt)}, samples, per_prompt,
                       rows={"reward": list(per_prompt)})


def _perplexity(texts: list[str], model, tokenizer, context_length: int) -> SuiteResult:
    """Token perplexity and bits per byte of held-out text; rows are (nats, tokens) and (bits, bytes)."""
    import math

    from shipyard.eval.stats import LN2
    from shipyard.models import inference

    scored = inference.text_nll(model, tokenizer, texts, context_length)
    nats, tokens = sum(n for n, _ in scored), sum(c for _, c in scored)
    if tokens == 0:
        raise ValueError("no tokens to score for perplexity")
    n_bytes = [len(t.encode()) for t in texts]
    return SuiteResult({"perplexity": math.exp(nats / tokens), "bpb": nats / sum(n_bytes) / LN2},
                       rows={"perplexity": [[n, c] for n, c in scored],
                             "bpb": [[n / LN2, b] for (n, _), b in zip(scored, n_bytes, strict=True)]})


def _mc_prefix(suite) -> str:
    """Few-shot prefix of a multiple-choice suite: each example's query and its right choice."""
    if not suite.num_fewshot:
        return ""
    rows, bad = parse_mc(suite.fewshot_data)
    rows = [r for r, _ in _strict(suite.fewshot_data, rows, bad)]
    if len(rows) < suite.num_fewshot:
        raise ValueError(f"suite {suite.name!r}: num_fewshot={suite.num_fewshot} but {suite.fewshot_data} has "
                         f"{len(rows)} items")
    return "".join(r["query"] + r["choices"][r["gold"]] + "\n\n" for r in rows[: suite.num_fewshot])


def parse_mc(path: str):
    from shipyard.data.shards import parse_records

    return parse_records(path, _mc_row, "multiple-choice items", "bad_item")


def _multiple_choice(suite, rows: list, model, tokenizer) -> SuiteResult:
    """acc and acc_norm (log-likelihood per byte of each choice), as lm-evaluation-harness scores them."""
    from shipyard.models import inference

    prefix = _mc_prefix(suite)
    hits, norm_hits, samples = [], [], []
    scored = iter(inference.score_continuations(  # every item's choices in one batched call
        model, tokenizer, [(prefix + item["query"], c) for item in rows for c in item["choices"]]))
    for item in rows:
        scores = [next(scored)[0] for _ in item["choices"]]
        normed = [s / max(len(c.encode()), 1) for s, c in zip(scores, item["choices"], strict=True)]
        pick = max(range(len(scores)), key=scores.__getitem__)
        pick_norm = max(range(len(normed)), key=normed.__getitem__)
        hits.append(float(pick == item["gold"]))
        norm_hits.append(float(pick_norm == item["gold"]))
        if len(samples) < 5:
            samples.append({"prompt": item["query"], "reference": item["choices"][item["gold"]],
                            "answer": item["choices"][pick]})
    return SuiteResult({"acc": sum(hits) / len(rows), "acc_norm": sum(norm_hits) / len(rows)}, samples,
                       rows={"acc": hits, "acc_norm": norm_hits})


def _generation(suite, rows: list, model, tokenizer, new_tokens: int) -> SuiteResult:
    """Greedy answers against the references (ROUGE, BLEU, chrF, exact match) and the references'
    bits per byte after the prompt (``answer_bpb``: how likely the model finds the reference answer)."""
    from shipyard.data.preferences import render_prompt
    from shipyard.eval import metrics as M
    from shipyard.models import inference

    examples = fewshot_examples(suite)
    prompts = [render_prompt(with_examples(m, examples), tokenizer) for m, _ in rows]
    refs = [ref for _, ref in rows]
    scores: dict[str, float] = {}
    per_row: dict[str, list] = {}
    if set(suite.metrics) - {"answer_bpb"}:
        answers = inference.generate(model, tokenizer, prompts, new_tokens)
        rouge_keys = tuple(k for k in suite.metrics if k.startswith("rouge"))
        if rouge_keys:
            per_row.update(M.rouge_rows(answers, refs, rouge_keys))
        if "exact_match" in suite.metrics:
            per_row["exact_match"] = [float(M.normalize_answer(a) == M.normalize_answer(r))
                                      for a, r in zip(answers, refs, strict=True)]
        scores.update({k: sum(v) / len(v) for k, v in per_row.items()})
        for name, metric in (("bleu", M.bleu), ("chrf", M.chrf)):  # corpus-level: no per-row CI
            if name in suite.metrics:
                scores[name] = metric(answers, refs)
    else:
        answers = [""] * len(prompts)
    if "answer_bpb" in suite.metrics:
        from shipyard.eval.stats import LN2

        scored = inference.score_continuations(model, tokenizer, list(zip(prompts, refs, strict=True)))
        per_row["answer_bpb"] = [[-lp / LN2, len(r.encode())] for (lp, _), r in zip(scored, refs, strict=True)]
        scores["answer_bpb"] = sum(b for b, _ in per_row["answer_bpb"]) / sum(n for _, n in per_row["answer_bpb"])
    samples = [{"prompt": p, "reference": r, "answer": a}
               for p, r, a in list(zip(prompts, refs, answers, strict=True))[:5]]
    return SuiteResult(scores, samples, rows=per_row)


def win_rate_rows(candidate: list[float], baseline: list[float]) -> list[float]:
    """Per prompt: 1 where the candidate's reward beats the baseline's, 0.5 on a tie, else 0."""
    return [1.0 if c > b else 0.5 if c == b else 0.0 for c, b in zip(candidate, baseline, strict=True)]

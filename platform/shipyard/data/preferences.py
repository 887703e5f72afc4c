"""Human feedback as training data: ranked completions become (prompt, chosen, rejected) pairs.

Three row formats are accepted, mixed freely in one JSONL file:

- pairs: ``{prompt, chosen, rejected}`` with string values;
- rankings: ``{prompt, completions: [k strings], ranks: [k ints]}``, rank 1 the best; each pair of
  differently ranked completions gives one (chosen, rejected) pair, so k completions with distinct
  ranks give k(k-1)/2 pairs (ties give none);
- chat: ``{chosen: [messages], rejected: [messages]}`` (optionally ``prompt: [messages]``): the
  prompt is the shared turns before the final assistant turn of each side.

String prompts are user instructions; every prompt is rendered with the model's chat template
(ours by default), the same way fine-tuning, evaluation and serving render them. Rows that cannot
be used are quarantined with file:line and the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

from shipyard.data.sft_data import check_messages
from shipyard.data.shards import Quarantined, parse_records
from shipyard.templates import format_prompt


def ranking_pairs(completions: list[str], ranks: list[int]) -> list[tuple[str, str]]:
    """(chosen, rejected) for every two completions of different rank (lower rank = better)."""
    pairs = []
    for i in range(len(completions)):
        for j in range(i + 1, len(completions)):
            if ranks[i] != ranks[j]:
                better, worse = (i, j) if ranks[i] < ranks[j] else (j, i)
                pairs.append((completions[better], completions[worse]))
    return pairs


def _ranked(obj: dict) -> list[tuple[str, str]] | str:
    comps, ranks = obj.get("completions"), obj.get("ranks")
    if not isinstance(comps, list) or not all(isinstance(c, str) for c in comps):
        return "completions must be a list of strings"
    if not isinstance(ranks, list) or not all(isinstance(r, int) and not isinstance(r, bool) for r in ranks):
        return "ranks must be a list of integers (1 = best)"
    if len(comps) != len(ranks):
        return f"{len(comps)} completions but {len(ranks)} ranks"
    if len(comps) < 2:
        return "a ranking needs at least 2 completions"
    if len(set(comps)) < len(comps):
        return "completions repeat"
    pairs = ranking_pairs(comps, ranks)
    return pairs or "every completion has the same rank: no preference to learn"


def _chat(obj: dict) -> tuple[list[dict], str, str] | str:
    chosen, rejected = obj["chosen"], obj["rejected"]
    for side, msgs in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(msgs, list) or not msgs:
            return f"{side} must be a non-empty list of messages"
        problem = check_messages(msgs, side)
        if problem:
            return problem
    prompt = obj.get("prompt")
    if prompt is not None:  # explicit prompt turns; chosen/rejected hold the answer turn(s)
        problem = check_messages(prompt, "prompt") if isinstance(prompt, list) else "prompt must be a list of messages"
        if problem:
            return problem
        chosen, rejected = prompt + chosen, prompt + rejected
    if chosen[:-1] != rejected[:-1]:
        return "chosen and rejected differ before their last turn: no shared prompt"
    if len(chosen) < 2:
        return "no prompt turns before the answer"
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def parse_preference(obj: dict) -> tuple[object, list[tuple[str, str]]] | str:
    """(prompt, [(chosen, rejected), ...]) of one row, or the reason it cannot be used.

    The prompt is a string instruction or a list of chat messages.
    """
    if "completions" in obj or "ranks" in obj:
        if not isinstance(obj.get("prompt"), str):
            return "a ranking row needs a string prompt"
        pairs = _ranked(obj)
        return pairs if isinstance(pairs, str) else (obj["prompt"], pairs)
    if "chosen" not in obj or "rejected" not in obj:
        return "not a preference row: needs chosen/rejected, or completions/ranks"
    if isinstance(obj["chosen"], list) or isinstance(obj["rejected"], list):
        parsed = _chat(obj)
        return parsed if isinstance(parsed, str) else (parsed[0], [parsed[1:]])
    missing = [k for k in ("prompt", "chosen", "rejected") if not isinstance(obj.get(k), str)]
    if missing:
        return f"missing or non-string key(s): {', '.join(missing)}"
    if obj["chosen"] == obj["rejected"]:
        return "chosen and rejected are the same text"
    return obj["prompt"], [(obj["chosen"], obj["rejected"])]


def render_prompt(prompt, tokenizer=None) -> str:
    """A string instruction or chat messages as the model-facing prompt text."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if len(messages) == 1 and messages[0]["role"] == "user":
        return format_prompt(messages[0]["content"])
    raise ValueError("a multi-turn prompt needs a tokenizer with a chat template")


def load_preferences(path: str | Path, limit: int | None = None,
                     tokenizer=None) -> tuple[list[dict], list[Quarantined]]:
    """Pairs ``{prompt, chosen, rejected}`` (prompt rendered) from any of the accepted row formats.

    ``limit`` caps the number of pairs. Raises ValueError if the file yields no pair at all.
    """
    rows, bad = parse_records(path, parse_preference, "preference pairs", "bad_preference")
    out = [{"prompt": render_prompt(prompt, tokenizer), "chosen": c, "rejected": r, "source": source}
           for (prompt, pairs), source in rows for c, r in pairs]
    return (out[:limit] if limit else out), bad


def _prompt_messages(obj: dict) -> list[dict] | str:
    """The prompt of a prompt row or preference row as chat messages, or the reason there is none."""
    if set(obj) & {"chosen", "rejected", "completions", "ranks"}:
        parsed = parse_preference(obj)
        if isinstance(parsed, str):
            return parsed
        prompt = parsed[0]
    else:
        prompt = obj.get("prompt")
        if isinstance(prompt, list):
            return check_messages(prompt, "prompt") or prompt
        if not (isinstance(prompt, str) and prompt.strip()):
            return "needs a non-empty string prompt (or a list of chat messages)"
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def load_prompt_messages(path: str | Path, limit: int | None = None) -> tuple[list[list[dict]], list[Quarantined]]:
    """The distinct prompts of a file of prompt rows (``{prompt}``) or preference rows, as chat messages."""
    rows, bad = parse_records(path, _prompt_messages, "prompts", "bad_prompt")
    seen: dict[str, list[dict]] = {}
    for messages, _ in rows:
        seen.setdefault(json.dumps(messages, sort_keys=True), messages)
    prompts = list(seen.values())
    return (prompts[:limit] if limit else prompts), bad


def load_prompts(path: str | Path, limit: int | None = None,
                 tokenizer=None) -> tuple[list[str], list[Quarantined]]:
    """The distinct prompts of a file of prompt or preference rows, rendered for the model."""
    messages, bad = load_prompt_messages(path, limit)
    return [render_prompt(m, tokenizer) for m in messages], bad

"""Instruction data for fine-tuning: two row formats, one template, weighted task mixtures.

Rows are either ``{instruction, input?, response}`` or chat ``{messages: [{role, content}, ...]}``
ending with an assistant turn. Both become (prompt, completion) text through the tokenizer's chat
template (ours, or e.g. SmolLM2's ChatML), so training, evaluation and serving render prompts the
same way; the loss covers completion tokens only. Bad rows are quarantined with file:line.
"""

from __future__ import annotations

import random
from pathlib import Path

from shipyard.data.shards import Quarantined, parse_records

ROLES = ("system", "user", "assistant")


def check_messages(msgs: list, key: str = "messages") -> str | None:
    """The reason ``msgs`` is not a list of {role, content} chat turns, or None."""
    if not isinstance(msgs, list) or not msgs:
        return f"{key} must be a non-empty list of messages"
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            return f"{key}[{i}] needs role in {list(ROLES)} and a string content"
    return None


def to_messages(obj: dict) -> list[dict] | str:
    """The row as chat messages, or the reason it cannot be used."""
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or len(msgs) < 2:
            return "messages must be a list of at least 2 turns"
        problem = check_messages(msgs)
        if problem:
            return problem
        if msgs[-1]["role"] != "assistant":
            return "the last message must be the assistant's (it is what the model learns to say)"
        return msgs
    missing = [k for k in ("instruction", "response") if not isinstance(obj.get(k), str)]
    if missing:
        return f"neither messages nor instruction/response rows: missing or non-string {', '.join(missing)}"
    user = f"{obj['instruction']}\n\n{obj['input']}" if obj.get("input") else obj["instruction"]
    return [{"role": "user", "content": user}, {"role": "assistant", "content": obj["response"]}]


def load_conversations(path: str | Path) -> tuple[list[tuple[list[dict], str]], list[Quarantined]]:
    """Every usable row of ``path`` as (chat messages, file:line), and the quarantined ones."""
    return parse_records(path, to_messages, "rows", "bad_row")


def to_pair(messages: list[dict], tokenizer) -> dict[str, str]:
    """Prompt = every turn before the last, rendered with the chat template plus the generation prompt."""
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    return {"prompt": prompt, "completion": messages[-1]["content"]}


def mix(tasks: dict[str, list], weights: dict[str, float], total: int | None, seed: int) -> list:
    """A shuffled mixture with each task's share ∝ its weight; small tasks are up-sampled.

    ``total`` defaults to the rows available. Each row carries its task name (``task`` key).
    """
    rng = random.Random(seed)
    total = total or sum(len(r) for r in tasks.values())
    wsum = sum(weights.values())
    out = []
    for name, rows in tasks.items():
        n = max(1, round(total * weights[name] / wsum))
        picked = rng.sample(rows, n) if n <= len(rows) else [rng.choice(rows) for _ in range(n)]
        out.extend({**r, "task": name} for r in picked)
    rng.shuffle(out)
    return out

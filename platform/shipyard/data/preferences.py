"""Preference pairs (prompt, chosen, rejected) in the prompt format every stage shares.

The demo task is the classic "steer toward positive sentiment": the prompt is the opening words of
a movie-review snippet, and the higher-rated human continuation is chosen over the lower-rated one.
"""

from __future__ import annotations

from pathlib import Path

from shipyard.data.shards import Quarantined, read_records
from shipyard.templates import format_prompt

CONTINUE = 'Continue the movie review that begins: "{opening}"'


def preference_prompt(opening: str) -> str:
    return format_prompt(CONTINUE.format(opening=opening))


def load_preferences(path: str | Path, limit: int | None = None) -> tuple[list[dict], list[Quarantined]]:
    """Rows {prompt, chosen, rejected} with the prompt templated and the opening echoed in each answer."""
    rows, bad = read_records(path, ("prompt", "chosen", "rejected"))
    out = [{"prompt": preference_prompt(r["prompt"]), "chosen": r["prompt"] + r["chosen"],
            "rejected": r["prompt"] + r["rejected"]} for r in rows]
    return (out[:limit] if limit else out), bad

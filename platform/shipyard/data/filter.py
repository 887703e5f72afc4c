"""data_filter stage: raw shards -> normalized, rule-filtered, exact-deduplicated corpus.

    shipyard run pipelines/lifecycle.py -c pipelines/configs/tiny-cpu.yaml   # runs it as the first step

Each rule is a datatrove-style step: ``check(text) -> None`` when the document passes, or a short
reason string when it does not. Every drop is counted by reason; malformed rows go to quarantine
with file:line and reason. The invariant ``kept + dropped + quarantined == read`` always holds.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shipyard.config import DataFilterConfig
from shipyard.data.shards import Quarantined, read_rows, write_quarantine

Rule = Callable[[str], str | None]
_SPACES = re.compile(r"[ \t\u00a0]+")


def normalize(text: str, form: str) -> str:
    """Unicode normal form, unified newlines, collapsed runs of spaces, stripped ends."""
    if form != "none":
        text = unicodedata.normalize(form, text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(_SPACES.sub(" ", ln).strip() for ln in text.split("\n")).strip()


def build_rules(cfg: DataFilterConfig) -> list[tuple[str, Rule]]:
    """The quality rules, in the order they run; each name is its drop reason."""

    def too_short(t: str) -> str | None:
        return None if len(t) >= cfg.min_chars else f"shorter than {cfg.min_chars} chars"

    def too_long(t: str) -> str | None:
        return None if len(t) <= cfg.max_chars else f"longer than {cfg.max_chars} chars"

    def few_words(t: str) -> str | None:
        return None if len(t.split()) >= cfg.min_words else f"fewer than {cfg.min_words} words"

    def low_alpha(t: str) -> str | None:
        chars = [c for c in t if not c.isspace()]
        ratio = sum(c.isalpha() for c in chars) / max(len(chars), 1)
        return None if ratio >= cfg.min_alpha_ratio else f"letter ratio {ratio:.2f} < {cfg.min_alpha_ratio}"

    def repeated_lines(t: str) -> str | None:
        lines = [ln for ln in t.split("\n") if ln.strip()]
        if len(lines) < 3:
            return None
        ratio = 1 - len(set(lines)) / len(lines)
        return None if ratio <= cfg.max_duplicate_line_ratio else f"duplicate-line ratio {ratio:.2f}"

    return [
        ("too_short", too_short),
        ("too_long", too_long),
        ("few_words", few_words),
        ("low_alpha_ratio", low_alpha),
        ("repeated_lines", repeated_lines),
    ]


@dataclass
class FilterResult:
    read: int = 0
    kept: int = 0
    quarantined: int = 0
    dropped: Counter = field(default_factory=Counter)
    chars_in: int = 0
    chars_out: int = 0

    def metrics(self) -> dict[str, float]:
        out = {"read": self.read, "kept": self.kept, "quarantined": self.quarantined,
               "dropped": sum(self.dropped.values()), "chars_in": self.chars_in, "chars_out": self.chars_out,
               "kept_fraction": self.kept / max(self.read, 1)}
        out.update({f"dropped.{k}": v for k, v in sorted(self.dropped.items())})
        return out


def run_data_filter(cfg: DataFilterConfig, clean_dir: str | Path, quarantine_dir: str | Path) -> FilterResult:
    """Filter ``cfg.input`` into ``clean_dir/corpus.jsonl``; bad rows go to ``quarantine_dir``.

    Args:
        cfg: the stage config.
        clean_dir: output directory of the clean corpus (``corpus.jsonl``, ``stats.json``).
        quarantine_dir: output directory for ``quarantine.jsonl`` (malformed rows) and
            ``dropped.jsonl`` (rule failures: the row and its reason).

    Returns:
        The counts, with ``kept + sum(dropped) + quarantined == read``.
    """
    clean_dir, quarantine_dir = Path(clean_dir), Path(quarantine_dir)
    clean_dir.mkdir(parents=True, exist_ok=True)
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    rules = build_rules(cfg)
    seen: set[bytes] = set()
    result = FilterResult()
    bad: list[Quarantined] = []
    with open(clean_dir / "corpus.jsonl", "w", encoding="utf-8") as out, \
            open(quarantine_dir / "dropped.jsonl", "w", encoding="utf-8") as dropped:
        for item in read_rows(cfg.input, cfg.text_key):
            if cfg.max_docs is not None and result.read >= cfg.max_docs:
                break
            result.read += 1
            if isinstance(item, Quarantined):
                bad.append(item)
                continue
            result.chars_in += len(item.text)
            text = normalize(item.text, cfg.normalize)
            reason_key, reason = next(((k, r) for k, rule in rules if (r := rule(text))), (None, None))
            if reason_key is None and cfg.exact_dedup:
                digest = hashlib.sha256(text.encode()).digest()
                if digest in seen:
                    reason_key, reason = "exact_duplicate", "exact duplicate of an earlier document"
                seen.add(digest)
            if reason_key is not None:
                result.dropped[reason_key] += 1
                dropped.write(json.dumps({"source": item.source, "reason": reason, "text": text},
                                         ensure_ascii=False) + "\n")
                continue
            result.kept += 1
            result.chars_out += len(text)
            out.write(json.dumps({"text": text, "source": item.source}, ensure_ascii=False) + "\n")
    result.quarantined = len(bad)
    write_quarantine(quarantine_dir / "quarantine.jsonl", bad)
    (clean_dir / "stats.json").write_text(json.dumps(result.metrics(), indent=2))
    assert result.kept + sum(result.dropped.values()) + result.quarantined == result.read
    return result

"""Guardrails at the application boundary: rails over what a user sends, what the model writes and what
retrieval puts in the prompt.

A rail is a detector, where it runs and an action:

    rails:
      - {detector: pii, at: [input, output], action: redact}
      - {detector: toxicity, at: [input, output], action: block, threshold: 0.8}
      - {detector: injection, at: [sources], action: block}

Detectors reuse the curation stage's: ``pii`` is ``shipyard.data.pii`` (validated: Luhn, mod-97, ...),
``toxicity`` is alt-profanity-check's calibrated model (as the toxicity filter and reward use it);
``injection`` is a list of prompt-injection phrasings (instructions to ignore or reveal the system prompt,
role markers, a new persona). Actions: ``block`` refuses an input, cuts an output before the segment that
tripped it (finish_reason ``content_filter``) and drops a source; ``redact`` replaces what was found (PII:
its placeholder; a toxic or injecting segment: ``[removed]``); ``annotate`` changes nothing and reports it.

Text is judged segment by segment (a sentence, a line, or at most ``MAX_SEGMENT`` characters cut where no
PII can straddle the cut), so a streamed answer is held back only until its segment ends, and the stream
and the whole answer come out the same (``OutputRails.feed`` / ``finish``). Found values are never
reported, only the rail, the detector and a count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from shipyard.schema import StrictModel

Where = Literal["input", "output", "sources"]
MAX_SEGMENT = 400  # characters held back at most when a segment has no sentence end
REMOVED = "[removed]"
_END = re.compile(r"[.!?]+(?=\s)|\n")
_INJECTION = re.compile("|".join([
    r"\b(?:ignore|disregard|forget|override)\b.{0,40}\b(?:previous|prior|above|earlier|all|system|your)\b.{0,20}"
    r"\b(?:instructions?|prompts?|rules?|messages?|context)\b",
    r"\b(?:reveal|print|show|repeat|output)\b.{0,30}\b(?:system prompt|hidden instructions?|your instructions)\b",
    r"\byou are now\b.{0,40}\b(?:dan|unrestricted|jailbroken|developer mode|without (?:any )?(?:rules|limits))\b",
    r"(?:^|\n)\s*(?:system|assistant)\s*:", r"<\|(?:im_start|im_end|system|assistant)\|>",
    r"\bnew instructions?\s*:",
]), re.IGNORECASE)


class Rail(StrictModel):
    detector: Literal["pii", "toxicity", "injection"]
    at: list[Where] = Field(min_length=1, description="Where the rail runs: input, output, sources.")
    action: Literal["block", "redact", "annotate"] = "block"
    threshold: float = Field(0.8, ge=0, le=1, description="toxicity: the probability from which a segment is toxic.")
    kinds: list[str] | None = Field(None, description="pii: the kinds to find (default: all of shipyard.data.pii).")


class RailsConfig(StrictModel):
    rails: list[Rail] = Field(default_factory=list)

    def rails_at(self, where: str) -> list[Rail]:
        return [r for r in self.rails if where in r.at]


@dataclass
class Finding:
    rail: str  # "pii" / "toxicity" / "injection"
    where: str
    action: str
    count: int = 1

    def as_dict(self) -> dict:
        return {"rail": self.rail, "at": self.where, "action": self.action, "count": self.count}


@dataclass
class Checked:
    """One text through the rails: what may go on (``text``), the rail that blocked it, what was found."""

    text: str
    blocked: str | None = None
    findings: list[Finding] = field(default_factory=list)


def segments(text: str, final: bool = True) -> tuple[list[str], str]:
    """(complete segments, the rest still open): a segment ends after a sentence end followed by whitespace,
    a newline, or past ``MAX_SEGMENT`` at a space with no digit or ``@`` beside it. Cuts depend only on the
    text up to one character past them, so any prefix is cut the same way; ``final`` closes the rest."""
    done, start = [], 0
    while True:
        cut = _next_cut(text, start)
        if cut is None:
            break
        done.append(text[start:cut])
        start = cut
    rest = text[start:]
    if final and rest:
        return [*done, rest], ""
    return done, rest


def _next_cut(text: str, start: int) -> int | None:
    """Where the segment from ``start`` ends, or None while that is not yet known. Every test reads at most 25
    characters past the cut it makes, and none before ``start``: a longer text is cut the same way."""
    m = _END.search(text, start)
    if m and m.end() - start <= MAX_SEGMENT:
        return m.end() if m.end() < len(text) else None
    for i in range(start + MAX_SEGMENT, min(len(text) - 25, start + 2 * MAX_SEGMENT)):
        if text[i] == " " and _safe_space(text, start, i):
            return i + 1
    if len(text) - 25 > start + 2 * MAX_SEGMENT:  # no safe space at all: a hard cut, never unbounded
        return start + 2 * MAX_SEGMENT
    return None


def _safe_space(text: str, start: int, i: int) -> bool:
    """No PII straddles a space without a digit or ``@`` in the words on either side (or an IBAN's letters)."""
    before, after = text[max(start, i - 24):i].split(" ")[-1], text[i + 1:i + 25].split(" ")[0]
    return not re.search(r"[\d@]", before + after) and not re.fullmatch(r"[A-Z]{1,4}", after or "-")


class Rails:
    """A deployment's rails, ready to judge text."""

    def __init__(self, config: RailsConfig):
        self.config = config

    def runs_at(self, where: str) -> bool:
        return bool(self.config.rails_at(where))

    def check(self, text: str, where: str) -> Checked:
        """The whole text, segment by segment, through the rails that run at ``where``."""
        out = Checked("")
        for seg in segments(text)[0]:
            got = self.segment(seg, where)
            out.findings.extend(got.findings)
            if got.blocked:
                out.blocked = got.blocked
                return out
            out.text += got.text
        return out

    def segment(self, seg: str, where: str) -> Checked:
        out = Checked(seg)
        for rail in self.config.rails_at(where):
            found, redacted = _detect(rail, out.text)
            if not found:
                continue
            out.findings.append(Finding(rail.detector, where, rail.action, found))
            if rail.action == "block":
                out.blocked, out.text = rail.detector, ""
                return out
            if rail.action == "redact":
                out.text = redacted
        return out

    def sources(self, chunks: list[dict]) -> tuple[list[dict], list[Finding]]:
        """Retrieved chunks before they enter the prompt: a blocked one is dropped, a redacted one rewritten."""
        kept, findings = [], []
        for chunk in chunks:
            got = self.check(chunk["text"], "sources")
            findings.extend(got.findings)
            if got.blocked is None:
                kept.append({**chunk, "text": got.text})
        return kept, findings


def _detect(rail: Rail, text: str) -> tuple[int, str]:
    """(how many found, the text redacted)."""
    if rail.detector == "pii":
        from shipyard.data.pii import ORDER, scrub

        redacted, counts = scrub(text, rail.kinds or ORDER)
        return sum(counts.values()), redacted
    if rail.detector == "injection":
        n = len(_INJECTION.findall(text))
        return n, _removed(text) if n else text
    if not text.strip():
        return 0, text
    from profanity_check import predict_prob

    toxic = float(predict_prob([text])[0]) >= rail.threshold
    return int(toxic), _removed(text) if toxic else text


def _removed(text: str) -> str:
    """The segment replaced by ``[removed]``, its surrounding whitespace kept."""
    return text[:len(text) - len(text.lstrip())] + REMOVED + text[len(text.rstrip()):]


class OutputRails:
    """The output rails over a streamed answer: ``feed`` the new text, get what may be sent now; ``finish``
    sends the rest. ``blocked`` is set once a block rail tripped (nothing more is sent); ``text()`` is all
    that was let through."""

    def __init__(self, rails: Rails):
        self.rails, self.buffer, self.blocked, self.findings, self.sent = rails, "", None, [], []

    def text(self) -> str:
        return "".join(self.sent)

    def feed(self, text: str, final: bool = False) -> str:
        if self.blocked:
            return ""
        self.buffer += text
        done, self.buffer = segments(self.buffer, final)
        out = ""
        for seg in done:
            got = self.rails.segment(seg, "output")
            self.findings.extend(got.findings)
            if got.blocked:
                self.blocked, self.buffer = got.blocked, ""
                break
            out += got.text
        self.sent.append(out)
        return out

    def finish(self) -> str:
        return self.feed("", final=True)

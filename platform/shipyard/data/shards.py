"""Read text shards (JSONL or plain text, optionally gzipped) row by row, quarantining bad rows.

A malformed row never stops a run and is never silently dropped: it is yielded as a
``Quarantined`` record with its file, line number and reason, so the caller can write it out.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SHARD_SUFFIXES = (".jsonl", ".jsonl.gz", ".txt", ".txt.gz")


@dataclass(frozen=True)
class Row:
    text: str
    source: str  # "file:line"
    meta: dict


@dataclass(frozen=True)
class Quarantined:
    raw: str
    source: str
    reason: str


def list_shards(path: str | Path) -> list[Path]:
    """The shard files under ``path`` (or ``path`` itself), sorted for a stable order."""
    path = Path(path)
    if path.is_file():
        shards = [path]
    elif path.is_dir():
        shards = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(SHARD_SUFFIXES))
    else:
        raise FileNotFoundError(f"no such shard file or directory: {path}")
    if not shards:
        raise FileNotFoundError(f"no shards ({', '.join(SHARD_SUFFIXES)}) under {path}")
    return shards


def _open_lines(path: Path) -> Iterator[bytes]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        yield from f


def read_rows(path: str | Path, text_key: str = "text") -> Iterator[Row | Quarantined]:
    """Yield a Row per document, or a Quarantined record per malformed one.

    JSONL: one object per line with a string ``text_key``. Plain text: one document per line.
    Blank lines are skipped in both (they are not documents).
    """
    for shard in list_shards(path):
        is_jsonl = ".jsonl" in shard.name
        for lineno, raw in enumerate(_open_lines(shard), start=1):
            source = f"{shard.name}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Quarantined(raw.decode("utf-8", "replace"), source, f"invalid utf-8: {exc.reason}")
                continue
            if not line.strip():
                continue
            if not is_jsonl:
                yield Row(line.rstrip("\n"), source, {})
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Quarantined(line.rstrip("\n"), source, f"invalid json: {exc.msg} at column {exc.colno}")
                continue
            if not isinstance(obj, dict):
                yield Quarantined(line.rstrip("\n"), source, f"row is a {type(obj).__name__}, not an object")
            elif text_key not in obj:
                yield Quarantined(line.rstrip("\n"), source, f"missing key {text_key!r}")
            elif not isinstance(obj[text_key], str):
                yield Quarantined(line.rstrip("\n"), source,
                                  f"key {text_key!r} is {type(obj[text_key]).__name__}, not a string")
            else:
                yield Row(obj.pop(text_key), source, obj)


def read_records(path: str | Path, required: tuple[str, ...]) -> tuple[list[dict], list[Quarantined]]:
    """Load a small JSONL table whose rows must carry the ``required`` string fields.

    Returns:
        (rows, quarantined): good rows, and one Quarantined record (file:line, reason) per bad one.

    Raises:
        ValueError: if the file holds no good row at all.
    """
    rows, bad = [], []
    for item in read_rows(path, text_key=required[0]):
        if isinstance(item, Quarantined):
            bad.append(item)
            continue
        obj = {required[0]: item.text, **item.meta}
        missing = [k for k in required[1:] if not isinstance(obj.get(k), str)]
        if missing:
            bad.append(Quarantined(json.dumps(obj, ensure_ascii=False), item.source,
                                   f"missing or non-string key(s): {', '.join(missing)}"))
        else:
            rows.append(obj)
    if not rows:
        raise ValueError(f"{path}: no usable rows ({len(bad)} quarantined"
                         + (f", first: {bad[0].source}: {bad[0].reason})" if bad else ")"))
    return rows, bad


def write_quarantine(path: str | Path, items: list[Quarantined]) -> None:
    """Write quarantined rows as JSONL: the raw row, where it came from and why."""
    with open(path, "w", encoding="utf-8") as f:
        for q in items:
            f.write(json.dumps({"source": q.source, "reason": q.reason, "raw": q.raw}, ensure_ascii=False) + "\n")

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
    kind: str = "malformed"  # a stable key for counting: invalid_utf8, invalid_json, binary_file...


def list_shards(path: str | Path, unsupported: bool = False) -> list[Path]:
    """The shard files under ``path`` (or ``path`` itself), sorted for a stable order; with ``unsupported``,
    also the files no reader takes (``read_rows`` quarantines each, so none is skipped silently)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no such shard file or directory: {path}")
    files = sorted(p for p in path.rglob("*") if p.is_file())
    shards = [p for p in files if p.name.endswith(SHARD_SUFFIXES)]
    if not shards:
        found = f" (found only {', '.join(p.name for p in files[:5])})" if files else ""
        raise FileNotFoundError(f"no shards ({', '.join(SHARD_SUFFIXES)}) under {path}{found}")
    return files if unsupported else shards


def _open_lines(path: Path) -> Iterator[bytes]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        yield from f


BINARY_NUL_SHARE = 0.01  # NUL bytes in a shard's first 8 KiB beyond which it is not text (UTF-16 text is ~50%)


def _sniff(shard: Path) -> str | None:
    """Why a whole shard is unreadable as text (unsupported type, binary, UTF-16, empty, corrupt gzip), or None.
    A stray NUL in text is the line's problem, not the file's."""
    if not shard.name.endswith(SHARD_SUFFIXES):
        return f"unsupported_file: no reader for this file type (readers: {', '.join(SHARD_SUFFIXES)})"
    try:
        with (gzip.open if shard.name.endswith(".gz") else open)(shard, "rb") as f:
            head = f.read(8192)
    except (OSError, EOFError) as exc:
        return f"corrupt_file: {exc}"
    if not head:
        return "empty_file: no rows"
    if head.count(b"\x00") > BINARY_NUL_SHARE * len(head):
        return "binary_file: NUL bytes (a binary or UTF-16 file, not UTF-8 text)"
    return None


def shard_label(shard: Path, root: Path) -> str:
    """How a row's source names its file: the path under the input folder (``east/part-0.jsonl``), so two
    folders' files of one name stay apart; a single file given as the input is named by its name."""
    try:
        return shard.relative_to(root).as_posix() if root != shard else shard.name
    except ValueError:
        return shard.name


def read_rows(path: str | Path, text_key: str | None = "text", root: str | Path | None = None
              ) -> Iterator[Row | Quarantined]:
    """Yield a Row per document, or a Quarantined record per malformed one.

    JSONL: one object per line with a string ``text_key``. Plain text: one document per line.
    Blank lines are skipped in both (they are not documents); a UTF-8 byte-order mark is not text. A file
    that is not text at all (binary, UTF-16, empty, a corrupt gzip, a type no reader takes) yields one
    Quarantined record at line 0; a gzip that breaks mid-way yields one at the line where it broke; either
    way the next file is read. Sources are ``file:line`` with the file's path under ``root`` (default: ``path``
    when it is a folder).
    """
    base = Path(root) if root is not None else Path(path)
    for shard in list_shards(path, unsupported=True):
        label = shard_label(shard, base)
        problem = _sniff(shard)
        if problem:
            kind, reason = problem.split(": ", 1)
            yield Quarantined("", f"{label}:0", reason, kind)
            continue
        is_jsonl = ".jsonl" in shard.name
        lineno = 0
        try:
            for lineno, raw in enumerate(_open_lines(shard), start=1):
                if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                yield from _parse_line(raw, f"{label}:{lineno}", is_jsonl, text_key)
        except (OSError, EOFError) as exc:
            yield Quarantined("", f"{label}:{lineno + 1}", f"unreadable from here on: {exc}", "corrupt_file")


def _parse_line(raw: bytes, source: str, is_jsonl: bool, text_key: str | None) -> Iterator[Row | Quarantined]:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield Quarantined(raw.decode("utf-8", "replace"), source, f"invalid utf-8: {exc.reason}", "invalid_utf8")
        return
    if not line.strip():
        return
    if not is_jsonl:
        yield Row(line.rstrip("\n"), source, {})
        return
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        yield Quarantined(line.rstrip("\n"), source, f"invalid json: {exc.msg} at column {exc.colno}", "invalid_json")
        return
    if not isinstance(obj, dict):
        yield Quarantined(line.rstrip("\n"), source, f"row is a {type(obj).__name__}, not an object", "not_object")
    elif text_key is None:  # the caller validates the fields itself
        yield Row("", source, obj)
    elif text_key not in obj:
        yield Quarantined(line.rstrip("\n"), source, f"missing key {text_key!r}", "missing_text")
    elif not isinstance(obj[text_key], str):
        yield Quarantined(line.rstrip("\n"), source,
                          f"key {text_key!r} is {type(obj[text_key]).__name__}, not a string", "text_not_string")
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


def parse_records(path: str | Path, parse, what: str, category: str) -> tuple[list[tuple], list[Quarantined]]:
    """Every JSON row of ``path`` through ``parse(obj)``, which returns a value or the reason (a str).

    Returns:
        ([(value, file:line), ...], quarantined): bad JSON and rejected rows carry their reason.

    Raises:
        ValueError: naming ``what`` and the first problem, if no row is usable.
    """
    good, bad = [], []
    for item in read_rows(path, text_key=None):
        if isinstance(item, Quarantined):
            bad.append(item)
            continue
        value = parse(item.meta)
        if isinstance(value, str):
            bad.append(Quarantined(json.dumps(item.meta, ensure_ascii=False), item.source, value, category))
        else:
            good.append((value, item.source))
    if not good:
        first = f", first: {bad[0].source}: {bad[0].reason}" if bad else ""
        raise ValueError(f"{path}: no usable {what} ({len(bad)} quarantined{first})")
    return good, bad


def write_quarantine(path: str | Path, items: list[Quarantined]) -> None:
    """Write quarantined rows as JSONL: the raw row, where it came from and why."""
    with open(path, "w", encoding="utf-8") as f:
        for q in items:
            f.write(json.dumps({"source": q.source, "reason": q.reason, "raw": q.raw}, ensure_ascii=False) + "\n")


def split_holdout(rows: list, fraction: float = 0.05, minimum: int = 4) -> tuple[list, list]:
    """(train, held_out): the first ``fraction`` of the rows (at least ``minimum``) is held out."""
    n = max(minimum, int(len(rows) * fraction))
    if n >= len(rows):
        raise ValueError(f"too few rows ({len(rows)}) to hold out {n} for evaluation")
    return rows[n:], rows[:n]

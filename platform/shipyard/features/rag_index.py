"""``shipyard rag ingest PATH --index NAME``: split -> embed -> store, one new index version per call.

Documents are JSONL rows ``{"text", "id"?, "source"?, "tenant"?}`` or .txt/.md/.rst files (one
document each, its path as id and source). A row that can't be read is quarantined with its file,
line and reason, never dropped silently. Chunks are windows of ``chunk_tokens`` tokens of the
embedding model's own tokenizer, ``overlap_tokens`` shared with the previous window, cut at the
tokens' character offsets so every chunk is verbatim source text.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from shipyard.features.rag_index_config import TENANT_PATTERN, RagIndexConfig

TEXT_SUFFIXES = (".txt", ".md", ".rst")


@dataclass
class IngestResult:
    index: str
    version: int
    documents: int
    chunks: int
    tenants: dict[str, int]
    quarantined: int
    quarantine_path: str | None
    seconds: float
    repo: str

    @property
    def ref(self) -> str:
        return f"{self.index}@{self.version}"

    def metrics(self) -> dict[str, float]:
        return {"documents": self.documents, "chunks": self.chunks, "quarantined": self.quarantined,
                "index_version": self.version, "seconds": self.seconds}


def _files(path: Path) -> tuple[list[Path], list[Path]]:
    """(the files ingest reads, the other files of the folder: quarantined, never skipped silently)."""
    if path.is_file():
        return [path], []
    if path.is_dir():
        every = sorted(p for p in path.rglob("*") if p.is_file())
        files = [p for p in every if p.suffix in (*TEXT_SUFFIXES, ".jsonl")]
        if files:
            return files, [p for p in every if p.suffix not in (*TEXT_SUFFIXES, ".jsonl")]
        raise ValueError(f"{path}: no .jsonl, .txt, .md or .rst files in this folder")
    raise FileNotFoundError(f"{path}: no such file or folder")


def _jsonl_lines(path: Path):
    """(line number, text, None) per line, or (n, text with replacements, reason) for a line that is not UTF-8;
    a byte-order mark on the first line is dropped."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield n, raw.decode("utf-8").rstrip("\r\n"), None
            except UnicodeDecodeError as exc:
                yield n, raw.decode("utf-8", "replace").rstrip("\r\n"), \
                    f"invalid UTF-8: {exc.reason} at byte {exc.start} of the line"


def read_documents(path: str | Path, default_tenant: str) -> tuple[list[dict], list[dict]]:
    """(documents, quarantined rows) from a file or folder; each quarantined row says where and why."""
    root = Path(path)
    files, others = _files(root)
    docs = []
    bad = [{"file": str(f), "line": None, "reason": f"unsupported file type {f.suffix or f.name!r} (ingest reads "
                                                    f".jsonl, {', '.join(TEXT_SUFFIXES)})"} for f in others]
    for f in files:
        rel = f.name if root.is_file() else str(f.relative_to(root))
        if f.suffix != ".jsonl":
            text = f.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                docs.append({"id": rel, "text": text, "source": rel, "tenant": default_tenant})
            else:
                bad.append({"file": str(f), "line": None, "reason": "empty document"})
            continue
        for n, line, undecodable in _jsonl_lines(f):
            if not line.strip():
                continue
            where = {"file": str(f), "line": n, "raw": line[:500]}
            if undecodable:
                bad.append({**where, "reason": undecodable})
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                bad.append({**where, "reason": f"invalid JSON: {exc.msg}"})
                continue
            reason = _row_problem(row, default_tenant)
            if reason:
                bad.append({**where, "reason": reason})
                continue
            docs.append({"id": str(row.get("id") or f"{rel}:{n}"), "text": row["text"],
                         "source": str(row.get("source") or row.get("id") or f"{rel}:{n}"),
                         "tenant": row.get("tenant") or default_tenant})
    return docs, bad


def _other_tenants(store, index: str, tenants: set[str], tags: dict, log):
    """(rows of the latest version whose tenant this ingest does not hold, "NAME@V"), or (None, None): an ingest
    replaces the documents of the tenants it brings and keeps every other tenant's, so tenants can be ingested
    one at a time. Their chunks and embeddings are reused, so the chunking and embedding model must agree."""
    from shipyard.features import store as fs

    found = fs.versions(store, index)
    if not found:
        return None, None
    latest = max(found)
    keys = ("shipyard.embedding_model", "shipyard.chunk_tokens", "shipyard.overlap_tokens")
    rows = fs.read_version(store, found[latest])
    rows = rows[~rows["tenant"].isin(tenants)].copy()
    if rows.empty:
        return None, None
    differ = [k for k in keys if found[latest].tags.get(k) != tags[k]]
    if differ:
        raise ValueError(f"rag ingest: {index}@{latest} holds tenants {sorted(set(rows['tenant']))} made with other "
                         f"settings ({', '.join(f'{k}={found[latest].tags.get(k)}' for k in differ)}); ingest "
                         f"every tenant's documents together to change them")
    log(f"rag ingest: keeping {rows['tenant'].nunique()} other tenant(s) ({len(rows)} chunks) from {index}@{latest}")
    return rows, f"{index}@{latest}"


def _row_problem(row, default_tenant: str) -> str | None:
    if not isinstance(row, dict):
        return "not a JSON object"
    if not isinstance(row.get("text"), str) or not row["text"].strip():
        return "key 'text': missing or empty"
    tenant = row.get("tenant", default_tenant)
    if not isinstance(tenant, str) or not re.fullmatch(TENANT_PATTERN, tenant):
        return f"key 'tenant': {tenant!r} is not a tenant name ({TENANT_PATTERN})"
    for key in ("id", "source"):
        if key in row and not isinstance(row[key], (str, int)):
            return f"key {key!r}: expected a string"
    return None


def chunk_text(tokenizer, text: str, size: int, overlap: int) -> list[str]:
    """Token windows of ``size`` with ``overlap``, returned as the exact character spans they cover."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                        verbose=False)["offset_mapping"]
    if not offsets:
        return []
    step, out = size - overlap, []
    for start in range(0, len(offsets), step):
        span = offsets[start:start + size]
        out.append(text[span[0][0]:span[-1][1]].strip())
        if start + size >= len(offsets):
            break
    return [c for c in out if c]


def run_ingest(cfg: RagIndexConfig, documents: str | Path | None = None, repo: str | Path | None = None,
               embedder=None, log=print) -> IngestResult:
    """Chunk, embed and store ``documents`` as the next version of ``cfg.index``."""
    from datetime import datetime, timezone

    import pandas as pd

    from shipyard.features import store as fs
    from shipyard.features.embed import EMBEDDING_MODEL, Embedder

    t0 = time.perf_counter()
    documents = documents or cfg.documents
    if documents is None:
        raise ValueError("rag: no documents given (rag.documents in the profile, or PATH on the command line)")
    docs, bad = read_documents(documents, cfg.tenant)
    if not docs:
        raise ValueError(f"{documents}: no readable documents ({len(bad)} quarantined; first: "
                         f"{bad[0] if bad else 'none'})")
    embedder = embedder or Embedder()
    rows = []
    for doc in docs:
        for i, text in enumerate(chunk_text(embedder.tokenizer, doc["text"], cfg.chunk_tokens, cfg.overlap_tokens)):
            rows.append({"chunk_id": f"{doc['tenant']}/{doc['id']}#{i}", "doc_id": doc["id"], "text": text,
                         "source": doc["source"], "tenant": doc["tenant"]})
    frame = pd.DataFrame(rows)
    if frame["chunk_id"].duplicated().any():
        dup = frame.loc[frame["chunk_id"].duplicated(), "chunk_id"].iloc[0]
        raise ValueError(f"{documents}: document ids repeat within a tenant (chunk {dup!r}); "
                         f"give each row its own 'id'")
    frame["chunk"] = frame["chunk_id"]  # Feast returns feature columns in id order: trust this copy, not the key
    store = fs.open_store(repo)
    tags = {"shipyard.embedding_model": EMBEDDING_MODEL, "shipyard.chunk_tokens": str(cfg.chunk_tokens),
            "shipyard.overlap_tokens": str(cfg.overlap_tokens), "shipyard.documents": str(documents)}
    carried, carried_from = _other_tenants(store, cfg.index, set(frame["tenant"]), tags, log)
    log(f"rag ingest: {len(docs)} documents -> {len(frame)} chunks; embedding with {EMBEDDING_MODEL}")
    frame["embedding"] = list(embedder.embed(frame["text"].tolist(), cfg.batch_size))
    frame["event_timestamp"] = datetime.now(timezone.utc)
    if carried is not None:
        carried["event_timestamp"] = frame["event_timestamp"].iloc[0]
        frame = pd.concat([frame, carried[frame.columns]], ignore_index=True)
        tags["shipyard.carried_from"] = carried_from
    version = fs.write_version(store, cfg.index, frame, tags)
    qpath = None
    if bad:
        qpath = Path(store.repo_path) / "data" / f"{fs.view_name(cfg.index, version)}.quarantine.jsonl"
        qpath.write_text("".join(json.dumps(b) + "\n" for b in bad))
        log(f"rag ingest: {len(bad)} rows quarantined -> {qpath}")
    result = IngestResult(cfg.index, version, len(docs), len(frame), frame["tenant"].value_counts().to_dict(),
                          len(bad), str(qpath) if qpath else None, round(time.perf_counter() - t0, 2),
                          str(store.repo_path))
    log(f"rag ingest: index {result.ref} written to Feast ({result.repo})")
    return result

"""Benchmark the data_filter stage against datatrove alone, on a generated mixed-quality corpus.

    .venv/bin/python benchmarks/data_filter.py                 # 50k documents (several minutes)
    .venv/bin/python benchmarks/data_filter.py --docs 5000     # a quick look

The corpus is generated from the shipped demo corpora: each document is a fresh mix of real
sentences (so near-duplicates occur only where injected), plus injected junk (symbol spam,
repeated lines, too short, German, lorem ipsum, profanity), PII (emails, phones, cards, IBANs,
IPs), exact copies and near-duplicates (a few words changed; the pair's true word-5-gram Jaccard
similarity is computed and recorded).

Each variant runs in its own process, on all cores, and reports docs/s per core and peak RSS:
- ``datatrove``: datatrove's own steps for the rules both sides share (Gopher quality + repetition,
  C4 quality, exact dedup, MinHash dedup), each drop written with its step: the baseline;
- ``shipyard``: the data_filter stage with only those steps (``steps=[...]``), with quarantine,
  drop table and count reconciliation;
- ``shipyard-full`` (unless ``--skip-full``): the whole chain (NFC, full PII, length, language,
  toxicity besides), for its drop table, PII counts and near-dup recall at Jaccard >= 0.8
  (target >= 0.9) and MinHash precision.
It prints per-step seconds of both same-step variants, then last the peak-RSS ratio (target <= 1.10),
the docs/s/core ratio shipyard/datatrove (target >= 2.0) and whether every document's decision
(kept with the same text, or dropped by the same step for the same reason) is identical; it exits 1
if one differs.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAW = REPO / "data" / "demo" / "raw"
GERMAN = ["Der Hafen liegt am Rande der Stadt und ist seit Jahrhunderten ein Ort des Handels.",
          "Die Bibliothek hat einen neuen Lesesaal mit hohen Fenstern und langen Tischen eröffnet.",
          "Im Frühling wachsen Salat und Spinat besonders gut, wenn der Boden feucht bleibt.",
          "Das Brot wird am Abend geknetet und ruht über Nacht an einem kühlen Ort."]
PROFANE = ["you are a fucking idiot", "what a piece of shit", "shut the hell up, asshole", "stupid damn moron"]
DATATROVE_RULES = dict(
    gopher_quality=dict(min_doc_words=20, max_non_alpha_words_ratio=0.6, min_stop_words=1),
    c4_quality=dict(filter_no_terminal_punct=False, min_num_sentences=1, filter_curly_bracket=False),
    gopher_repetition=dict(top_n_grams=[[2, 0.3], [3, 0.3], [4, 0.3]]),
)


# --------------------------------------------------------------------------- corpus generation
def _sentences() -> list[str]:
    out = []
    for path in sorted(RAW.iterdir()):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                text = json.loads(line)["text"] if ".jsonl" in path.name else line
                for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
                    if 6 <= len(s.split()) <= 40 and s[0].isupper() and s[-1] in ".!?" and "`" not in s:
                        out.append(s)
    return sorted(set(out))


def _shingles(text: str, n: int = 5) -> set:
    w = re.sub(r"[^\w\s]", "", text.lower()).split()
    return {" ".join(w[i:i + n]) for i in range(max(1, len(w) - n + 1))}


def jaccard(a: str, b: str) -> float:
    x, y = _shingles(a), _shingles(b)
    return len(x & y) / max(1, len(x | y))


def _pii(rng: random.Random) -> str:
    return rng.choice([
        f"Contact {rng.choice(['ann', 'bob', 'chen', 'dana'])}.{rng.randint(1, 999)}@example.org for details.",
        f"Call +44 20 7946 {rng.randint(1000, 9999)} during office hours.",
        "The card on file is 4111 1111 1111 1111.",
        "Refunds go to GB82 WEST 1234 5698 7654 32.",
        f"The mirror runs at 10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}.",
    ])


def _perturb(text: str, rng: random.Random, changes: int) -> str:
    words = text.split()
    for _ in range(changes):
        i = rng.randrange(len(words))
        words[i] = rng.choice(["really", "quite", "also", "often", "then", "still"])
    return " ".join(words)


def generate(out: Path, n_docs: int, shards: int, seed: int = 0) -> dict:
    """Write ``shards`` JSONL shards of ``n_docs`` documents; returns the injected ground truth."""
    rng = random.Random(seed)
    pool = _sentences()
    docs: list[dict] = []
    truth = {"near_dup_pairs": [], "exact_copies": 0, "junk": 0, "pii_docs": 0}
    good: list[int] = []
    while len(docs) < n_docs:
        i, r = len(docs), rng.random()
        if r < 0.03 and good:  # exact copy of a good doc
            docs.append({"text": docs[rng.choice(good)]["text"]})
            truth["exact_copies"] += 1
        elif r < 0.08 and good:  # near-duplicate: a few words changed
            src = rng.choice(good)
            text = _perturb(docs[src]["text"], rng, changes=rng.randint(1, 4))
            docs.append({"text": text})
            truth["near_dup_pairs"].append([src, i, round(jaccard(docs[src]["text"], text), 4)])
        elif r < 0.18:  # junk of one kind or another
            truth["junk"] += 1
            kind = rng.randrange(6)
            docs.append({"text": [
                " ".join(rng.choice(["##", "$$", "%%", "&&", "**", "12", "34"]) for _ in range(60)),
                "\n".join([rng.choice(pool)] * 10),
                "Too short.",
                " ".join(rng.choice(GERMAN) for _ in range(5)),
                "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " + rng.choice(pool),
                " ".join(f"{rng.choice(pool)} {rng.choice(PROFANE).capitalize()}!" for _ in range(3)),
            ][kind]})
        else:
            text = " ".join(rng.choice(pool) for _ in range(rng.randint(4, 12)))
            if rng.random() < 0.1:
                text += " " + _pii(rng)
                truth["pii_docs"] += 1
            docs.append({"text": text})
            good.append(i)
    out.mkdir(parents=True, exist_ok=True)
    per = -(-n_docs // shards)
    ids = {}
    for s in range(shards):
        with open(out / f"shard-{s:03d}.jsonl", "w", encoding="utf-8") as f:
            for line, d in enumerate(docs[s * per:(s + 1) * per], start=1):
                f.write(json.dumps(d, ensure_ascii=False) + "\n")
                ids[s * per + line - 1] = f"shard-{s:03d}.jsonl:{line}"
    truth["near_dup_pairs"] = [[ids[a], ids[b], j] for a, b, j in truth["near_dup_pairs"]]
    truth["bytes"] = sum(p.stat().st_size for p in out.iterdir())
    return truth


# --------------------------------------------------------------------------- variants (child processes)
SHARED_STEPS = ["gopher_quality", "gopher_repetition", "c4_quality", "exact_dedup", "minhash_dedup"]


def run_datatrove(corpus: Path, work: Path, workers: int) -> dict:
    """datatrove's own steps for the shared rules; every dropped document is written with its step, as
    Shipyard writes it, so both variants do the same work and their decisions can be compared."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.exact_dedup import (
        ExactDedupConfig,
        ExactDedupFilter,
        ExactDedupSignature,
        ExactFindDedups,
    )
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from shipyard.data.steps import document_text

    n = len(list(corpus.glob("*.jsonl")))
    exact, mh = ExactDedupConfig(content_getter=document_text), MinhashConfig()
    out = lambda step: JsonlWriter(str(work / "dropped" / step))

    def ex(pipe, name, tasks, w=workers):
        LocalPipelineExecutor(pipe, tasks=tasks, workers=min(w, tasks), logging_dir=str(work / "logs" / name),
                              start_method="fork").run()

    t0 = time.perf_counter()
    ex([JsonlReader(str(corpus), glob_pattern="*.jsonl", compression=None),
        GopherQualityFilter(**DATATROVE_RULES["gopher_quality"], exclusion_writer=out("gopher_quality")),
        GopherRepetitionFilter(**DATATROVE_RULES["gopher_repetition"], exclusion_writer=out("gopher_repetition")),
        C4QualityFilter(**DATATROVE_RULES["c4_quality"], exclusion_writer=out("c4_quality")),
        JsonlWriter(str(work / "filtered")), ExactDedupSignature(str(work / "exact_sigs"), exact)], "filter", n)
    ex([ExactFindDedups(str(work / "exact_sigs"), str(work / "exact_dups"), exact)], "exact_find", 1)
    reader = lambda: JsonlReader(str(work / "filtered"))
    ex([reader(), ExactDedupFilter(str(work / "exact_dups"), exact), MinhashDedupSignature(str(work / "sigs"), mh)],
       "sigs", n)
    ex([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=mh)], "buckets", mh.num_buckets)
    ex([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=mh)], "cluster", 1, 1)
    ex([reader(), ExactDedupFilter(str(work / "exact_dups"), exact, exclusion_writer=out("exact_dedup")),
        MinhashDedupFilter(str(work / "remove"), exclusion_writer=out("minhash_dedup")),
        JsonlWriter(str(work / "final"))], "final", n)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "steps": _datatrove_steps(work), "decisions": datatrove_decisions(work)}


def _datatrove_steps(work: Path) -> list[dict]:
    """Seconds per step, summed over tasks, from each phase's merged stats.json."""
    out: dict[str, float] = {}
    for path in sorted((work / "logs").glob("*/stats.json")):
        for step in json.loads(path.read_text()):
            t = step.get("time_stats") or 0
            out[step["name"]] = out.get(step["name"], 0.0) + float(t["total"] if isinstance(t, dict) else t)
    return [{"step": k, "seconds": v} for k, v in out.items()]


def _gz_rows(folder: Path):
    for path in sorted(folder.rglob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                yield path, json.loads(line)


def _digest(text: str) -> str:
    import hashlib

    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def _shipyard_id(datatrove_id: str) -> str:
    """datatrove's JsonlReader names a row ``file/index`` (0-based); Shipyard names it ``file:line``."""
    name, index = datatrove_id.rsplit("/", 1)
    return f"{name}:{int(index) + 1}"


def datatrove_decisions(work: Path) -> dict[str, str]:
    """Every document's fate: ``kept <text digest>`` or ``<step> <reason>``."""
    out = {_shipyard_id(d["id"]): f"kept {_digest(d['text'])}" for _, d in _gz_rows(work / "final")}
    for path, d in _gz_rows(work / "dropped"):
        step = path.parent.name
        out[_shipyard_id(d["id"])] = f"{step} {(d.get('metadata') or {}).get('filter_reason') or step}"
    return out


def shipyard_decisions(clean: Path, quarantine: Path) -> dict[str, str]:
    out = {}
    for line in open(clean / "corpus.jsonl", encoding="utf-8"):
        row = json.loads(line)
        out[row["source"]] = f"kept {_digest(row['text'])}"
    for line in open(quarantine / "dropped.jsonl", encoding="utf-8"):
        row = json.loads(line)
        dedup = row["step"] in ("exact_dedup", "minhash_dedup")
        out[row["source"]] = f"{row['step']} {row['step'] if dedup else row['reason']}"
    return out


def run_shipyard(corpus: Path, work: Path, workers: int, steps: list[str] | None = None) -> dict:
    from shipyard.data.data_filter import run_data_filter
    from shipyard.data.data_filter_config import DataFilterConfig

    extra = {"steps": steps} if steps else {"length": {"min_chars": 40, "min_words": 5}}
    cfg = DataFilterConfig(input=str(corpus), workers=workers, **extra, **DATATROVE_RULES)
    t0 = time.perf_counter()
    res = run_data_filter(cfg, work / "clean", work / "q", work_dir=work / "work")
    seconds = time.perf_counter() - t0
    decisions = shipyard_decisions(work / "clean", work / "q")
    kept = sorted(s for s, d in decisions.items() if d.startswith("kept "))
    dedup_dropped = {s: d.split()[0] for s, d in decisions.items() if d.split()[0] in ("exact_dedup", "minhash_dedup")}
    return {"seconds": seconds, "read": res.read, "kept": res.kept, "dropped": dict(res.dropped),
            "pii": dict(res.pii), "steps": res.steps, "kept_ids": kept, "dedup_dropped": dedup_dropped,
            "decisions": decisions}


def _child(variant: str, corpus: str, work: str, workers: int) -> None:
    run = {"datatrove": run_datatrove, "shipyard": partial(run_shipyard, steps=SHARED_STEPS),
           "shipyard-full": run_shipyard}[variant]
    out = run(Path(corpus), Path(work), workers)
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out["peak_rss_mb"] = max(self_kb, kids_kb) / 1024
    print("RESULT " + json.dumps(out))


def _run_variant(variant: str, corpus: Path, work: Path, workers: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", variant, str(corpus), str(work), str(workers)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise SystemExit(f"{variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def _dedup_quality(truth: dict, res: dict) -> dict:
    kept, removed = set(res["kept_ids"]), res["dedup_dropped"]
    reached = kept | set(removed)
    pairs = [(a, b) for a, b, j in truth["near_dup_pairs"] if j >= 0.8 and a in reached and b in reached]
    caught = sum(1 for a, b in pairs if not (a in kept and b in kept))
    injected = {x for a, b, _ in truth["near_dup_pairs"] for x in (a, b)}
    mh_removed = [s for s, step in removed.items() if step == "minhash_dedup"]
    correct = sum(1 for s in mh_removed if s in injected)
    return {"pairs_at_jaccard_0.8": len(pairs), "recall": caught / max(1, len(pairs)),
            "minhash_removed": len(mh_removed), "precision": correct / max(1, len(mh_removed))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=50_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--skip-full", action="store_true", help="skip the full-chain run (PII, language, toxicity)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], args.child[2], int(args.child[3]))
        return
    with tempfile.TemporaryDirectory(prefix="shipyard-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        truth = generate(tmp / "corpus", args.docs, args.shards)
        pairs = truth["near_dup_pairs"]
        print(f"corpus: {args.docs} docs in {args.shards} shards, {truth['bytes'] / 1e6:.1f} MB, generated in "
              f"{time.perf_counter() - t0:.1f}s; injected {truth['exact_copies']} exact copies, {len(pairs)} "
              f"near-dups ({sum(j >= 0.8 for *_, j in pairs)} at Jaccard >= 0.8), {truth['junk']} junk, "
              f"{truth['pii_docs']} with PII; {args.workers} workers")
        dt = _run_variant("datatrove", tmp / "corpus", tmp / "dt", args.workers)
        sy = _run_variant("shipyard", tmp / "corpus", tmp / "sy", args.workers)
        full = None if args.skip_full else _run_variant("shipyard-full", tmp / "corpus", tmp / "full", args.workers)
    report(args, dt, sy, full, truth)


def _decision_diff(a: dict[str, str], b: dict[str, str]) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [f"{k}: datatrove {a.get(k)!r}, shipyard {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def report(args, dt: dict, sy: dict, full: dict | None, truth: dict) -> None:
    rate = lambda r: args.docs / r["seconds"] / args.workers
    print(f"\nshared rules: Gopher quality + repetition, C4 quality, exact + MinHash dedup ({args.workers} workers)")
    print(f"{'variant':<28} {'seconds':>8} {'docs/s/core':>12} {'peak RSS MB':>12}")
    rows = [("datatrove", dt), ("shipyard, same steps", sy)] + ([("shipyard, full chain", full)] if full else [])
    for name, r in rows:
        print(f"{name:<28} {r['seconds']:8.1f} {rate(r):12.1f} {r['peak_rss_mb']:12.0f}")
    print("\nper step, seconds summed over tasks (before: datatrove; after: shipyard, same steps):")
    for s in dt["steps"]:
        print(f"  datatrove {s['step']:<24} {s['seconds']:7.1f}s")
    for s in sy["steps"]:
        print(f"  shipyard  {s['step']:<24} {s['seconds']:7.1f}s  (in {s['docs_in']}, out {s['docs_out']})")
    if full:
        print(f"\nfull chain (adds normalize, PII, length, language, toxicity): kept {full['kept']} of {full['read']}; "
              f"drops: {json.dumps(full['dropped'], sort_keys=True)}")
        print(f"PII replaced: {json.dumps(full['pii'], sort_keys=True)}")
        q = _dedup_quality(truth, full)
        print(f"near-dup recall at Jaccard >= 0.8: {q['recall']:.3f} over {q['pairs_at_jaccard_0.8']} pairs "
              f"(target >= 0.9); MinHash precision {q['precision']:.3f} over {q['minhash_removed']} removals")
    diff = _decision_diff(dt["decisions"], sy["decisions"])
    for line in diff[:20]:
        print("  differs: " + line)
    rss = sy["peak_rss_mb"] / dt["peak_rss_mb"]
    print(f"\npeak RSS shipyard/datatrove, same steps: {rss:.2f} (target <= 1.10)")
    print(f"ratio shipyard/datatrove docs/s/core, same steps: {rate(sy) / rate(dt):.2f} (target >= 2.0)")
    same = len(dt["decisions"]) - len(diff)
    print(f"decisions identical: {'yes' if not diff else 'NO'} ({same} of {len(dt['decisions'])} documents: "
          f"kept with the same text, or dropped by the same step for the same reason)")
    if diff:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

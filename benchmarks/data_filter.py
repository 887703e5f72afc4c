"""Benchmark the data_filter stage against datatrove alone, on a generated mixed-quality corpus.

    .venv/bin/python benchmarks/data_filter.py                 # 50k documents (several minutes)
    .venv/bin/python benchmarks/data_filter.py --docs 5000     # a quick look

The corpus is generated from the shipped demo corpora: each document is a fresh mix of real
sentences (so near-duplicates occur only where injected), plus injected junk (symbol spam,
repeated lines, too short, German, lorem ipsum, profanity), PII (emails, phones, cards, IBANs,
IPs), exact copies and near-duplicates (a few words changed; the pair's true word-5-gram Jaccard
similarity is computed and recorded).

Each variant runs in its own process, on all cores, and reports docs/s per core and peak RSS:
- ``datatrove``: datatrove's own steps for every rule it has (FTFY, its PII formatter for emails
  and IPs, Gopher quality + repetition, C4 quality, exact dedup, MinHash dedup), the baseline;
- ``shipyard``: the data_filter stage with the same datatrove rules plus ours (NFC, full PII,
  length, language, toxicity), quarantine, drop table and count reconciliation.
It prints the ratio shipyard/datatrove of docs/s (target >= 0.9) and the near-dup recall at
Jaccard >= 0.8 (target >= 0.9) and precision of the MinHash stage.
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
def run_datatrove(corpus: Path, work: Path, workers: int) -> dict:
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
    from datatrove.pipeline.formatters import FTFYFormatter, PIIFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from shipyard.data.steps import document_text

    n = len(list(corpus.glob("*.jsonl")))
    exact, mh = ExactDedupConfig(content_getter=document_text), MinhashConfig()

    def ex(pipe, name, tasks, w=workers):
        LocalPipelineExecutor(pipe, tasks=tasks, workers=min(w, tasks), logging_dir=str(work / "logs" / name),
                              start_method="fork").run()

    t0 = time.perf_counter()
    ex([JsonlReader(str(corpus), glob_pattern="*.jsonl", compression=None), FTFYFormatter(), PIIFormatter(),
        GopherQualityFilter(**DATATROVE_RULES["gopher_quality"]),
        GopherRepetitionFilter(**DATATROVE_RULES["gopher_repetition"]),
        C4QualityFilter(**DATATROVE_RULES["c4_quality"]),
        JsonlWriter(str(work / "filtered")), ExactDedupSignature(str(work / "exact_sigs"), exact)], "filter", n)
    ex([ExactFindDedups(str(work / "exact_sigs"), str(work / "exact_dups"), exact)], "exact_find", 1)
    reader = lambda: JsonlReader(str(work / "filtered"))
    ex([reader(), ExactDedupFilter(str(work / "exact_dups"), exact), MinhashDedupSignature(str(work / "sigs"), mh)],
       "sigs", n)
    ex([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=mh)], "buckets", mh.num_buckets)
    ex([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=mh)], "cluster", 1, 1)
    ex([reader(), ExactDedupFilter(str(work / "exact_dups"), exact), MinhashDedupFilter(str(work / "remove")),
        JsonlWriter(str(work / "final"))], "final", n)
    return {"seconds": time.perf_counter() - t0}


def run_shipyard(corpus: Path, work: Path, workers: int) -> dict:
    from shipyard.data.data_filter import run_data_filter
    from shipyard.data.data_filter_config import DataFilterConfig

    cfg = DataFilterConfig(input=str(corpus), workers=workers, length={"min_chars": 40, "min_words": 5},
                           **DATATROVE_RULES)
    t0 = time.perf_counter()
    res = run_data_filter(cfg, work / "clean", work / "q", work_dir=work / "work")
    seconds = time.perf_counter() - t0
    kept = {json.loads(line)["source"] for line in open(work / "clean" / "corpus.jsonl", encoding="utf-8")}
    dedup_dropped = {}
    for line in open(work / "q" / "dropped.jsonl", encoding="utf-8"):
        row = json.loads(line)
        if row["step"] in ("exact_dedup", "minhash_dedup"):
            dedup_dropped[row["source"]] = row["step"]
    return {"seconds": seconds, "read": res.read, "kept": res.kept, "dropped": dict(res.dropped),
            "pii": dict(res.pii), "steps": res.steps, "kept_ids": sorted(kept), "dedup_dropped": dedup_dropped}


def _child(variant: str, corpus: str, work: str, workers: int) -> None:
    out = {"datatrove": run_datatrove, "shipyard": run_shipyard}[variant](Path(corpus), Path(work), workers)
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
    rate = lambda r: args.docs / r["seconds"] / args.workers
    print(f"\n{'variant':<11} {'seconds':>8} {'docs/s/core':>12} {'peak RSS MB':>12}")
    for name, r in (("datatrove", dt), ("shipyard", sy)):
        print(f"{name:<11} {r['seconds']:8.1f} {rate(r):12.1f} {r['peak_rss_mb']:12.0f}")
    ratio = rate(sy) / rate(dt)
    print(f"\nratio shipyard/datatrove docs/s: {ratio:.2f} (target >= 0.9)")
    print("\nper step (shipyard, summed over tasks):")
    for s in sy["steps"]:
        print(f"  {s['step']:<18} in {s['docs_in']:>7} out {s['docs_out']:>7} {s['seconds']:7.1f}s")
    print(f"\nkept {sy['kept']} of {sy['read']}; drops: {json.dumps(sy['dropped'], sort_keys=True)}")
    print(f"PII replaced: {json.dumps(sy['pii'], sort_keys=True)}")
    q = _dedup_quality(truth, sy)
    print(f"near-dup recall at Jaccard >= 0.8: {q['recall']:.3f} over {q['pairs_at_jaccard_0.8']} pairs "
          f"(target >= 0.9); MinHash precision {q['precision']:.3f} over {q['minhash_removed']} removals")


if __name__ == "__main__":
    main()

"""Retrieval latency of the RAG sidecar's search at 10k and 100k chunks, against exact search in one run.

    .venv/bin/python benchmarks/rag_retrieval.py [--sizes 10000 100000] [--queries 300]

Vectors: the Python FAQ's real chunk embeddings (all-MiniLM-L6-v2, shipped in the repo's demo data)
and, to reach 10k/100k, blends of them (one real vector + a random fraction of another + a little
Gaussian noise, re-normalized), so the collection lies where text embeddings lie (a narrow cone,
not the uniform sphere) without 270 near-copies of each chunk. Queries: FAQ questions embedded by the same
model. One query at a time, as the sidecar serves them. Per size it prints p50/p99 ms of

  * exact search in NumPy (the baseline: one matmul over the tenant's vectors + top-k),
  * ``Retriever.search`` as the sidecar runs it (exact below 50k chunks, FAISS HNSW from 50k; recall@5
    against exact),
  * Feast's own vector search (``retrieve_online_documents_v2``, milvus-lite) at the first size,

and, once, the query embedding and a whole ``POST /v1/retrieve`` to a real sidecar process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def timed(fn, queries) -> tuple[list[float], list]:
    out, ms = [], []
    for q in queries:
        t0 = time.perf_counter()
        out.append(fn(q))
        ms.append((time.perf_counter() - t0) * 1000)
    return ms, out


def frame_of(vecs, texts):
    from datetime import datetime, timezone

    import pandas as pd

    n = len(vecs)
    ids = [f"public/bench#{i}" for i in range(n)]
    return pd.DataFrame({"chunk_id": ids, "chunk": ids, "doc_id": [f"d{i % 97}" for i in range(n)],
                         "text": [texts[i % len(texts)] for i in range(n)], "source": ["bench"] * n,
                         "tenant": ["public"] * n, "embedding": list(vecs),
                         "event_timestamp": datetime.now(timezone.utc)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--top-k", type=int, default=5)
    args = ap.parse_args()
    import numpy as np
    from bench_common import REPO

    from shipyard.features.embed import Embedder
    from shipyard.features.rag_index import chunk_text, read_documents
    from shipyard.features.rag_index_config import RagIndexConfig
    from shipyard.features.retrieve import FeastRetriever, Retriever

    emb = Embedder()
    docs, _ = read_documents(REPO / "data/demo/rag/python-faq.jsonl", "public")
    cfg = RagIndexConfig(index="bench")
    texts = [c for d in docs for c in chunk_text(emb.tokenizer, d["text"], cfg.chunk_tokens, cfg.overlap_tokens)]
    t0 = time.perf_counter()
    real = emb.embed(texts)
    print(f"embedded {len(texts)} real FAQ chunks in {time.perf_counter() - t0:.1f} s "
          f"({len(texts) / (time.perf_counter() - t0):.0f} chunks/s)")
    questions = [line.strip() for d in docs for line in d["text"].splitlines() if line.strip().endswith("?")]
    rng = np.random.default_rng(0)
    questions = [questions[i] for i in rng.permutation(len(questions))][:args.queries]
    qvecs = emb.embed(questions)
    embed_ms, _ = timed(lambda q: emb.embed([q]), questions[:100])
    print(f"{len(questions)} queries; query embedding p50 {pct(embed_ms, .5):.2f} ms  p99 {pct(embed_ms, .99):.2f} ms")
    results = {"embed_ms": {"p50": pct(embed_ms, .5), "p99": pct(embed_ms, .99)}, "sizes": {}}

    for n in args.sizes:
        base = real[rng.integers(0, len(real), n)] + rng.random((n, 1)) * real[rng.integers(0, len(real), n)]
        vecs = base + rng.normal(scale=0.2 / np.sqrt(base.shape[1]), size=base.shape).astype(np.float32)
        vecs[:len(real)] = real
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        vecs = vecs.astype(np.float32)
        frame = frame_of(vecs, texts)

        def exact(q, vecs=vecs):
            s = vecs @ q
            top = np.argpartition(-s, args.top_k)[:args.top_k]
            return top[np.argsort(-s[top])]

        t0 = time.perf_counter()
        retriever = Retriever(frame, "bench", 1)
        build_s = time.perf_counter() - t0
        kind = type(retriever.tenants["public"][0]).__name__ if retriever.tenants["public"][0] else "exact"
        base_ms, truth = timed(exact, qvecs)
        ours_ms, hits = timed(lambda q, r=retriever: r.search(q, "public", args.top_k), qvecs)
        found = [{int(h.chunk_id.rsplit("#", 1)[1]) for h in got} for got in hits]
        recall = statistics.mean(len(ids & set(map(int, want))) / args.top_k
                                 for ids, want in zip(found, truth, strict=True))
        row = {"index": kind, "build_s": round(build_s, 2), "recall_at_k": round(recall, 4),
               "exact_numpy": {"p50": pct(base_ms, .5), "p99": pct(base_ms, .99)},
               "sidecar_search": {"p50": pct(ours_ms, .5), "p99": pct(ours_ms, .99)}}
        print(f"\n{n:>7} chunks  ({kind}, built in {build_s:.1f} s)")
        print(f"  exact NumPy (baseline)       p50 {pct(base_ms, .5):7.3f} ms  p99 {pct(base_ms, .99):7.3f} ms")
        print(f"  sidecar search ({kind:<13}) p50 {pct(ours_ms, .5):7.3f} ms  p99 {pct(ours_ms, .99):7.3f} ms  "
              f"-> p99 {pct(base_ms, .99) / pct(ours_ms, .99):.1f}x faster, recall@{args.top_k} {recall:.3f}")
        if n == args.sizes[0]:
            from shipyard.features import store as fs
            from shipyard.serving.local import start_sidecar, stop

            with tempfile.TemporaryDirectory() as repo:
                store = fs.open_store(repo)
                t0 = time.perf_counter()
                version = fs.write_version(store, "bench", frame, {})
                write_s = time.perf_counter() - t0
                view = fs.resolve(store, f"bench@{version}")[2]
                feast = FeastRetriever(store, view)
                feast_ms, _ = timed(lambda q, f=feast: f.search(q, "public", args.top_k), qvecs[:100])
                row["feast_milvus"] = {"p50": pct(feast_ms, .5), "p99": pct(feast_ms, .99), "write_s": write_s}
                print(f"  Feast milvus-lite            p50 {pct(feast_ms, .5):7.3f} ms  "
                      f"p99 {pct(feast_ms, .99):7.3f} ms  "
                      f"(written in {write_s:.1f} s) -> sidecar p50 {pct(feast_ms, .5) / pct(ours_ms, .5):.0f}x faster")
                import httpx
                from bench_common import free_port

                port = free_port()
                side = start_sidecar(f"bench@{version}", port, repo)
                try:
                    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
                        def ask(q, http=http):
                            return http.post("/v1/retrieve", json={"query": q, "top_k": args.top_k}).json()

                        http_ms, _ = timed(ask, questions[:200])
                finally:
                    stop(side)
                row["http_retrieve"] = {"p50": pct(http_ms, .5), "p99": pct(http_ms, .99)}
                print(f"  POST /v1/retrieve (embed + search + HTTP)  p50 {pct(http_ms, .5):7.3f} ms  "
                      f"p99 {pct(http_ms, .99):7.3f} ms")
        results["sizes"][n] = row
    print("\n" + json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()

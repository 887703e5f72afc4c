"""Query side: embed -> nearest chunks of one tenant.

The sidecar answers from indexes built from one Feast index version (the rows Feast holds for
it), one index per tenant, so a query can only ever reach its own tenant's chunks. Below
``HNSW_FROM`` chunks a tenant is searched exactly (one float32 matmul: 0.2 ms at 10k on 2 cores,
faster at batch 1 than FAISS's flat index, whose thread start-up gave 16 ms p99); from there on,
FAISS HNSW (M=32, efSearch=256). ``benchmarks/rag_retrieval.py`` measures both.
Metadata filters (equality on ``source`` or ``doc_id``) search the filtered rows exactly.
``FeastRetriever`` asks Feast's online store directly (milvus) and is the reference the
benchmark compares against.
"""

from __future__ import annotations

from dataclasses import dataclass

FILTER_KEYS = ("source", "doc_id")
HNSW_FROM = 50_000


class UnknownTenant(LookupError):
    pass


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    text: str
    source: str
    doc_id: str
    score: float


class Retriever:
    """Per-tenant vector indexes over one index version's rows (a DataFrame with an ``embedding`` column)."""

    def __init__(self, frame, index: str = "", version: int = 0, hnsw_from: int = HNSW_FROM):
        import faiss
        import numpy as np

        self.index, self.version = index, version
        self.tenants: dict[str, tuple] = {}
        for tenant, rows in frame.groupby("tenant", sort=True):
            rows = rows.reset_index(drop=True)
            vecs = np.ascontiguousarray(np.stack(rows["embedding"].to_numpy()), dtype=np.float32)
            ix = None
            if len(rows) >= hnsw_from:
                ix = faiss.IndexHNSWFlat(vecs.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
                ix.hnsw.efConstruction = 80
                ix.add(vecs)
                ix.hnsw.efSearch = 256
            self.tenants[str(tenant)] = (ix, vecs, rows[["chunk", "text", "source", "doc_id"]].to_dict("records"))

    def counts(self) -> dict[str, int]:
        return {t: len(v[2]) for t, v in self.tenants.items()}

    def search(self, query_vec, tenant: str, top_k: int = 4, filters: dict[str, str] | None = None) -> list[Hit]:
        import numpy as np

        if tenant not in self.tenants:
            raise UnknownTenant(f"tenant {tenant!r} has no documents in index {self.index}@{self.version}")
        ix, vecs, meta = self.tenants[tenant]
        q = np.asarray(query_vec, dtype=np.float32).reshape(1, -1)
        if filters:
            bad = sorted(set(filters) - set(FILTER_KEYS))
            if bad:
                raise ValueError(f"filters: unknown key(s) {bad}; filterable keys are {list(FILTER_KEYS)}")
            keep = np.array([i for i, m in enumerate(meta) if all(m[k] == v for k, v in filters.items())],
                            dtype=np.int64)
            pairs = [(int(keep[i]), s) for i, s in exact(vecs[keep], q[0], top_k)] if len(keep) else []
        elif ix is None:
            pairs = exact(vecs, q[0], top_k)
        else:
            scores, ids = ix.search(q, min(top_k, len(meta)))
            pairs = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
        return [Hit(meta[i]["chunk"], meta[i]["text"], meta[i]["source"], meta[i]["doc_id"], s) for i, s in pairs]


def exact(vecs, q, top_k: int) -> list[tuple[int, float]]:
    """(row, score) of the ``top_k`` highest inner products, best first."""
    import numpy as np

    scores = vecs @ q
    k = min(top_k, len(scores))
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    return [(int(i), float(scores[i])) for i in top]


class FeastRetriever:
    """The same search through Feast's ``retrieve_online_documents_v2`` (the online store's vector index).

    The reference, not the default: Feast 0.67's pgvector store applies filters (tenant, doc_id)
    after taking the top_k nearest rows, so a filtered query can return fewer than top_k hits.
    """

    def __init__(self, store, view):
        self.store, self.view = store, view

    def search(self, query_vec, tenant: str, top_k: int = 4, filters: dict[str, str] | None = None) -> list[Hit]:
        from feast.filter_models import ComparisonFilter, CompoundFilter

        conds = [ComparisonFilter(type="eq", key="tenant", value=tenant),
                 *(ComparisonFilter(type="eq", key=k, value=v) for k, v in (filters or {}).items())]
        flt = conds[0] if len(conds) == 1 else CompoundFilter(type="and", filters=conds)
        name = self.view.name
        from shipyard.features.store import cosine_metric

        # Milvus reports cosine similarity as "distance"; pgvector (the Helm chart's store) the distance 1 - cos.
        metric = cosine_metric(self.store)
        pgvector = metric == "cosine"
        df = self.store.retrieve_online_documents_v2(
            features=[f"{name}:{f}" for f in ("chunk", "text", "source", "doc_id")], query=list(map(float, query_vec)),
            top_k=top_k, distance_metric=metric, filters=flt).to_df()
        df = df.dropna(subset=["chunk"])
        df["score"] = 1.0 - df["distance"] if pgvector else df["distance"]
        df = df.sort_values("score", ascending=False)
        return [Hit(r.chunk, r.text, r.source, r.doc_id, float(r.score)) for r in df.itertuples()]


def load_index(ref: str, repo: str | None = None, backend: str = "faiss"):
    """(retriever, embedder, info) for index ``ref`` (NAME or NAME@VERSION) in the Feast repo.

    What the sidecar serves, ``shipyard rag query`` asks and the rag eval suite scores: one loader, one search.
    """
    from shipyard.features import store as fs
    from shipyard.features.embed import Embedder

    store = fs.open_store(repo)
    index, version, view = fs.resolve(store, ref)
    frame = fs.read_version(store, view)
    if backend == "feast":
        retriever = FeastRetriever(store, view)
        tenants = frame["tenant"].value_counts().to_dict()
    else:
        retriever = Retriever(frame, index, version)
        tenants = retriever.counts()
    embedder = Embedder()
    embedder.embed(["warm up"])
    info = {"index": index, "version": version, "ref": f"{index}@{version}", "backend": backend,
            "chunks": int(len(frame)), "tenants": {str(k): int(v) for k, v in tenants.items()},
            "embedding_model": view.tags.get("shipyard.embedding_model")}
    return retriever, embedder, info

"""data_filter stage: raw shards -> curated corpus, on datatrove's pipeline engine.

    shipyard run pipelines/lifecycle.py -c pipelines/configs/tiny-cpu.yaml   # its first step

Phases (each a datatrove ``LocalPipelineExecutor`` run, one task per input shard, all cores):

1. filter (per shard; fans out over pods with ``fan_out``): read + quarantine, normalize, PII scrub,
   length, language, Gopher quality/repetition, C4, toxicity -> ``filtered/<rank>.jsonl.gz``,
   plus exact-dedup signatures.
2. merge (one pod): exact-dedup find, MinHash signatures, LSH buckets, clusters; then each shard is
   re-read through the dedup filters into the final corpus.

Every rejected row is kept with its reason: malformed rows in ``quarantine.jsonl`` (file:line),
filtered rows in ``dropped.jsonl`` (step, reason). ``kept + dropped + quarantined == read`` is
checked at the end of every run. Completed tasks are skipped on a re-run with the same work dir,
so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from shipyard.data.data_filter_config import DataFilterConfig
from shipyard.data.shards import list_shards
from shipyard.data.steps import normalize_text

__all__ = ["FilterResult", "merge_parts", "normalize_text", "run_data_filter", "run_filter_phase", "run_merge_phase"]


@dataclass
class FilterResult:
    read: int = 0
    kept: int = 0
    quarantined: int = 0
    dropped: Counter = field(default_factory=Counter)
    quarantine_kinds: Counter = field(default_factory=Counter)
    chars_in: int = 0
    chars_out: int = 0
    pii: Counter = field(default_factory=Counter)
    toxicity_histogram: list[int] = field(default_factory=lambda: [0] * 10)
    steps: list[dict] = field(default_factory=list)
    dedup_clusters: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def metrics(self) -> dict[str, float]:
        out = {"read": self.read, "kept": self.kept, "quarantined": self.quarantined,
               "dropped": sum(self.dropped.values()), "chars_in": self.chars_in, "chars_out": self.chars_out,
               "kept_fraction": self.kept / max(self.read, 1), "docs_per_s": self.read / max(self.seconds, 1e-9)}
        out.update({f"dropped.{k}": v for k, v in sorted(self.dropped.items())})
        out.update({f"quarantined.{k}": v for k, v in sorted(self.quarantine_kinds.items())})
        out.update({f"pii.{k}": v for k, v in sorted(self.pii.items())})
        out.update({f"dedup.{k}": v for k, v in sorted(self.dedup_clusters.items())})
        for s in self.steps:
            out.update({f"step.{s['step']}.{k}": s[k] for k in ("docs_in", "docs_out", "chars_out", "seconds")})
        out.update({f"toxicity.bin_{i}": n for i, n in enumerate(self.toxicity_histogram) if n})
        return out

    def table(self) -> str:
        """The drop-reason table (markdown): per step, documents and characters in and out."""
        lines = ["| step | docs in | docs out | dropped | chars out | seconds |", "|---|---|---|---|---|---|"]
        for s in self.steps:
            lines.append(f"| {s['step']} | {s['docs_in']} | {s['docs_out']} | {s['dropped']} | "
                         f"{s['chars_out']} | {s['seconds']:.2f} |")
        lines += ["", "| reason | rows |", "|---|---|"]
        lines += [f"| quarantined: {k} | {v} |" for k, v in sorted(self.quarantine_kinds.items())]
        lines += [f"| {k} | {v} |" for k, v in sorted(self.dropped.items())]
        return "\n".join(lines)


def _executor(pipeline, work: Path, phase: str, tasks: int, workers: int, **kw):
    from datatrove.executor import LocalPipelineExecutor

    return LocalPipelineExecutor(pipeline, tasks=tasks, workers=max(1, min(workers, tasks)),
                                 logging_dir=str(work / "logs" / phase), start_method="fork", **kw)


def _workers(cfg: DataFilterConfig) -> int:
    return cfg.workers or len(os.sched_getaffinity(0))


def _exact_config():
    from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig

    from shipyard.data.steps import document_text

    return ExactDedupConfig(content_getter=document_text)


def _minhash_config(cfg: DataFilterConfig):
    from datatrove.pipeline.dedup.minhash import MinhashConfig

    m = cfg.minhash_dedup
    return MinhashConfig(n_grams=m.n_grams, num_buckets=m.num_buckets, hashes_per_bucket=m.hashes_per_bucket,
                         seed=m.seed)


def _keep_text(writer, document) -> dict:
    """The JSONL row of a document: datatrove's default adapter drops falsy fields, so a document whose text
    normalized to nothing came back without ``text`` and crashed the output step."""
    return {"text": document.text, "id": document.id, "metadata": document.metadata}


def jsonl_writer(folder: Path):
    """datatrove's JsonlWriter with rows that always carry text and id (``_keep_text``)."""
    from datatrove.pipeline.writers import JsonlWriter

    return JsonlWriter(str(folder), adapter=_keep_text)


def _dropped_writer(work: Path, step: str):
    return jsonl_writer(work / "dropped" / step)


def build_filter_pipeline(cfg: DataFilterConfig, files: list[str], work: Path) -> list:
    """Phase 1 as a list of datatrove steps (task ``rank`` handles ``files[rank]``)."""
    from datatrove.pipeline.dedup.exact_dedup import ExactDedupSignature
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter

    from shipyard.data import steps as S
    from shipyard.data.word_tokenizer import CachedSpacyTokenizer

    words = CachedSpacyTokenizer("en")  # one instance: the three word-level rules share its result cache
    pii_kinds = tuple(cfg.pii.types) if cfg.enabled("pii") else ()
    pipe: list = [S.ShardReader(files, str(work / "quarantine"), cfg.text_key, cfg.max_docs, pii_kinds, cfg.input)]
    on = cfg.enabled
    if on("normalize"):
        pipe.append(S.Normalizer(cfg.normalize.form, cfg.normalize.fix_mojibake))
    if on("pii"):
        pipe.append(S.PiiScrubber(pii_kinds))
    if on("length"):
        pipe.append(S.LengthFilter(**cfg.length.model_dump(), exclusion_writer=_dropped_writer(work, "length")))
    if on("language"):
        pipe.append(S.LanguageFilter(**cfg.language.model_dump(), exclusion_writer=_dropped_writer(work, "language")))
    if on("gopher_quality"):
        pipe.append(GopherQualityFilter(**cfg.gopher_quality.model_dump(), language=words,
                                        exclusion_writer=_dropped_writer(work, "gopher_quality")))
    if on("gopher_repetition"):
        pipe.append(GopherRepetitionFilter(**cfg.gopher_repetition.model_dump(), language=words,
                                           exclusion_writer=_dropped_writer(work, "gopher_repetition")))
    if on("c4_quality"):
        pipe.append(C4QualityFilter(**cfg.c4_quality.model_dump(), language=words,
                                    exclusion_writer=_dropped_writer(work, "c4_quality")))
    if on("toxicity"):
        tox = cfg.toxicity
        pipe.append(S.ToxicityFilter(tox.threshold, tox.action, tox.batch_size,
                                     exclusion_writer=_dropped_writer(work, "toxicity")))
    pipe.append(jsonl_writer(work / "filtered"))
    if on("exact_dedup"):
        pipe.append(ExactDedupSignature(str(work / "exact_sigs"), _exact_config()))
    return pipe


def run_filter_phase(cfg: DataFilterConfig, work: str | Path, shard: int = 0, fan_out: int = 1) -> int:
    """Phase 1 for this pod's share of the input shards (``shard`` of ``fan_out``); returns shard count."""
    work = Path(work)
    files = [str(f) for f in list_shards(cfg.input, unsupported=True)]  # others are quarantined, not skipped
    per_pod = -(-len(files) // fan_out)
    offset = min(shard * per_pod, len(files))
    local = min(per_pod, len(files) - offset)
    (work / "shards.json").parent.mkdir(parents=True, exist_ok=True)
    (work / "shards.json").write_text(json.dumps({"files": files}))
    if local > 0:
        from shipyard.data.steps import warm_up

        pipeline = build_filter_pipeline(cfg, files, work)
        warm_up(pipeline)
        _executor(pipeline, work, "filter", tasks=len(files), workers=_workers(cfg), local_tasks=local,
                  local_rank_offset=offset).run()
    return len(files)


def run_merge_phase(cfg: DataFilterConfig, work: str | Path, clean_dir: str | Path,
                    quarantine_dir: str | Path, seconds_so_far: float = 0.0) -> FilterResult:
    """Phase 2: dedup across all shards, write corpus/quarantine/dropped, reconcile the counts."""
    from datatrove.pipeline.dedup.exact_dedup import ExactDedupFilter, ExactFindDedups
    from datatrove.pipeline.dedup.minhash import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )

    from shipyard.data.steps import RankReader
    from shipyard.data.word_tokenizer import CachedSpacyTokenizer

    t0 = time.perf_counter()
    work, clean_dir, quarantine_dir = Path(work), Path(clean_dir), Path(quarantine_dir)
    n = len(json.loads((work / "shards.json").read_text())["files"])
    workers = _workers(cfg)
    exact = cfg.enabled("exact_dedup")
    exact_filter = (lambda excl: [ExactDedupFilter(str(work / "exact_dups"), _exact_config(), exclusion_writer=excl)]
                    ) if exact else (lambda excl: [])
    if exact:
        _executor([ExactFindDedups(str(work / "exact_sigs"), str(work / "exact_dups"), _exact_config())],
                  work, "exact_find", tasks=1, workers=1).run()
    final = [RankReader(str(work / "filtered"))]
    final += exact_filter(_dropped_writer(work, "exact_dedup"))
    if cfg.enabled("minhash_dedup"):
        mh = _minhash_config(cfg)
        words = CachedSpacyTokenizer("en")
        words.warm_up()  # before the fork, so no worker builds its own
        _executor([RankReader(str(work / "filtered")), *exact_filter(None),
                   MinhashDedupSignature(str(work / "mh_sigs"), config=mh, language=words)],
                  work, "minhash_sigs", n, workers).run()
        _executor([MinhashDedupBuckets(str(work / "mh_sigs"), str(work / "mh_buckets"), config=mh)],
                  work, "minhash_buckets", mh.num_buckets, workers).run()
        _executor([MinhashDedupCluster(str(work / "mh_buckets"), str(work / "mh_remove"), config=mh,
                                       save_cluster_size=True)], work, "minhash_cluster", 1, 1).run()
        final.append(MinhashDedupFilter(str(work / "mh_remove"), load_cluster_sizes=True,
                                        exclusion_writer=_dropped_writer(work, "minhash_dedup")))
    final.append(jsonl_writer(work / "final"))
    _executor(final, work, "final", n, workers).run()

    result = _collect(work, n, cfg)
    result.seconds = seconds_so_far + time.perf_counter() - t0
    _write_outputs(work, n, result, clean_dir, quarantine_dir)
    return result


def merge_parts(parts: list[str | Path], work: str | Path) -> None:
    """Lay the filter-phase outputs of several pods into one work folder (file names are per rank,
    so parts never collide); hard links where the filesystem allows, copies otherwise."""
    work = Path(work)
    for part in map(Path, parts):
        for src in part.rglob("*"):
            if not src.is_file():
                continue
            dst = work / src.relative_to(part)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.exists():
                rel = src.relative_to(part)
                if src.name == "shards.json" or rel.parts[0] == "logs" and rel.parent.name == "filter":
                    continue  # the same shard list; each pod's executor.json / merged stats.json
                raise FileExistsError(f"two filter parts both wrote {rel}")
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)


def run_data_filter(cfg: DataFilterConfig, clean_dir: str | Path, quarantine_dir: str | Path,
                    work_dir: str | Path | None = None, keep_work: bool = False) -> FilterResult:
    """Curate ``cfg.input`` into ``clean_dir/corpus.jsonl``; every rejected row goes to ``quarantine_dir``.

    Args:
        cfg: the stage config.
        clean_dir: output directory: ``corpus.jsonl``, ``stats.json``, ``drop_table.md``,
            ``toxicity_hist.png``.
        quarantine_dir: output directory: ``quarantine.jsonl`` (malformed rows: source file:line,
            reason) and ``dropped.jsonl`` (filtered rows: source, step, reason, scrubbed text).
        work_dir: datatrove's working folder (signatures, logs, completion markers). Re-running
            with the same folder resumes: finished tasks are skipped. Default ``clean_dir/_work``.
        keep_work: keep ``work_dir`` after success (it is removed otherwise).

    Returns:
        The counts, with ``kept + sum(dropped) + quarantined == read``.
    """
    t0 = time.perf_counter()
    work = Path(work_dir) if work_dir else Path(clean_dir) / "_work"
    run_filter_phase(cfg, work)
    result = run_merge_phase(cfg, work, clean_dir, quarantine_dir, seconds_so_far=time.perf_counter() - t0)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _total(v) -> float:
    return v["total"] if isinstance(v, dict) else v


def _stat(stats: dict, key: str) -> float:
    return _total(stats.get(key, 0))


def _load_stats(work: Path, phase: str) -> list[list[dict]]:
    folder = work / "logs" / phase / "stats"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.exists() else []


class _Tally:
    """Sums datatrove's per-task step stats into one FilterResult and the drop table's rows."""

    def __init__(self):
        self.res, self.rows = FilterResult(), {}

    def row(self, label: str, step: dict, docs_in: float, docs_out: float) -> None:
        r = self.rows.setdefault(label, {"step": label, "docs_in": 0, "docs_out": 0, "dropped": 0, "chars_out": 0,
                                         "seconds": 0.0})
        r["docs_in"] += int(docs_in)
        r["docs_out"] += int(docs_out)
        r["dropped"] += int(docs_in - docs_out)
        r["chars_out"] += int(_total(step["stats"].get("doc_len", 0)))
        r["seconds"] += float(_total(step.get("time_stats", 0)) or 0)

    def prefixed(self, st: dict, prefix: str, into: Counter) -> int:
        """Add every ``<prefix><name>`` stat to ``into[name]``; returns their sum."""
        added = 0
        for k in st:
            if k.startswith(prefix):
                into[k.removeprefix(prefix)] += int(_total(st[k]))
                added += int(_total(st[k]))
        return added

    def filter_phase(self, step: dict) -> None:
        name, st, res = step["name"], step["stats"], self.res
        get = partial(_stat, st)
        if "shard reader" in name:
            self.row("read", step, get("read") + get("quarantined"), get("read"))
            res.read += int(get("read") + get("quarantined"))
            res.quarantined += int(get("quarantined"))
            res.chars_in += int(get("doc_len"))
            self.prefixed(st, "quarantined_", res.quarantine_kinds)
        elif "FILTER" in name:
            label = _step_label(name)
            self.row(label, step, get("total"), get("forwarded"))
            named = self.prefixed(st, "dropped_", res.dropped)
            for k in st:
                if k.startswith("toxicity_bin_"):
                    res.toxicity_histogram[int(k.rsplit("_", 1)[1])] += int(get(k))
            if get("dropped") > named:  # a filter that dropped without naming a reason
                res.dropped[label] += int(get("dropped") - named)
        elif "PII" in name or "normalize" in name:
            self.row("pii" if "PII" in name else "normalize", step, get("total"), get("total"))
            self.prefixed(st, "pii_", res.pii)

    def final_phase(self, step: dict) -> None:
        name, st, res = step["name"], step["stats"], self.res
        get = partial(_stat, st)
        if "exact-deduplication" in name or "MinHash" in name:
            exact = "exact" in name
            label, reason = ("exact_dedup", "exact_duplicate") if exact else ("minhash_dedup", "near_duplicate")
            self.row(label, step, get("total"), get("total") - get("dropped"))
            res.dropped[reason] += int(get("dropped"))
        elif "WRITER" in name:
            res.kept += int(get("total"))
            res.chars_out += int(get("doc_len"))

    def clusters(self, step: dict) -> None:
        st = step["stats"]
        cs = st.get("cluster_size", 0)
        self.res.dedup_clusters = {
            "near_dup_clusters": (cs.get("n", 1) if isinstance(cs, dict) else int(bool(cs))),
            "near_dup_docs_in_clusters": int(_total(st.get("duplicates", 0))),
            "near_dup_max_cluster": int(cs.get("max", cs.get("mean", 0)) if isinstance(cs, dict) else cs),
        }


def _collect(work: Path, n: int, cfg: DataFilterConfig) -> FilterResult:
    """Sum the per-task datatrove stats of every phase into one FilterResult."""
    tally = _Tally()
    for phase, add in (("filter", tally.filter_phase), ("final", tally.final_phase),
                       ("minhash_cluster", tally.clusters)):
        for task in _load_stats(work, phase):
            for step in task:
                add(step)
    res, rows = tally.res, tally.rows
    if "minhash_dedup" in rows:  # datatrove's MinhashDedupFilter keeps no doc_len; it feeds the writer directly
        rows["minhash_dedup"]["chars_out"] = res.chars_out
    if cfg.enabled("minhash_dedup"):
        m = cfg.minhash_dedup  # LSH: P(candidate | Jaccard s) = 1 - (1 - s^r)^b; threshold where it is steepest
        res.dedup_clusters["lsh_threshold"] = round((1 / m.num_buckets) ** (1 / m.hashes_per_bucket), 4)
        res.dedup_clusters["lsh_p_at_0.8"] = round(1 - (1 - 0.8 ** m.hashes_per_bucket) ** m.num_buckets, 4)
    res.dropped = Counter({k: v for k, v in res.dropped.items() if v})
    res.steps = list(rows.values())
    return res


def _step_label(name: str) -> str:
    labels = {"Gopher Quality": "gopher_quality", "Gopher Repetition": "gopher_repetition", "C4 Quality": "c4_quality",
              "length": "length", "language": "language", "toxicity": "toxicity"}
    return next((v for k, v in labels.items() if k in name), name)


def _iter_jsonl_gz(folder: Path):
    for path in sorted(folder.rglob("*.jsonl.gz")) if folder.exists() else []:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                yield path, json.loads(line)


def _write_outputs(work: Path, n: int, res: FilterResult, clean_dir: Path, quarantine_dir: Path) -> None:
    clean_dir.mkdir(parents=True, exist_ok=True)
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    with open(clean_dir / "corpus.jsonl", "w", encoding="utf-8") as out:
        for _, doc in _iter_jsonl_gz(work / "final"):
            meta = doc.get("metadata") or {}
            row = {"text": doc["text"], "source": doc["id"]}
            row.update({k: meta[k] for k in ("language", "toxicity", "toxic", "pii") if k in meta})
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(quarantine_dir / "quarantine.jsonl", "w", encoding="utf-8") as q:
        for path in sorted((work / "quarantine").glob("*.jsonl")):
            with open(path, encoding="utf-8") as f:
                shutil.copyfileobj(f, q)
    dropped = 0
    with open(quarantine_dir / "dropped.jsonl", "w", encoding="utf-8") as d:
        for path, doc in _iter_jsonl_gz(work / "dropped"):
            step = path.parent.name
            meta = doc.get("metadata") or {}
            reason = meta.get("filter_reason") or {"exact_dedup": "exact_duplicate",
                                                   "minhash_dedup": "near_duplicate"}.get(step, step)
            d.write(json.dumps({"source": doc["id"], "step": step, "reason": reason, "text": doc["text"]},
                               ensure_ascii=False) + "\n")
            dropped += 1
    total_dropped = sum(res.dropped.values())
    if res.kept + total_dropped + res.quarantined != res.read or dropped != total_dropped:
        raise RuntimeError(f"data_filter counts do not reconcile: kept {res.kept} + dropped {total_dropped} "
                           f"+ quarantined {res.quarantined} != read {res.read} (dropped rows on disk: {dropped})")
    (clean_dir / "stats.json").write_text(json.dumps({**res.metrics(), "steps": res.steps,
                                                      "toxicity_histogram": res.toxicity_histogram}, indent=2))
    (clean_dir / "drop_table.md").write_text(res.table() + "\n")
    if any(res.toxicity_histogram):
        _plot_histogram(res.toxicity_histogram, clean_dir / "toxicity_hist.png")


def _plot_histogram(counts: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar([i / 10 + 0.05 for i in range(10)], counts, width=0.09)
    ax.set_xlabel("profanity probability")
    ax.set_ylabel("documents")
    ax.set_yscale("log")
    ax.set_title("toxicity score distribution")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

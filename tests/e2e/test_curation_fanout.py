"""The data_filter fan-out on kfp.local: ParallelFor over 2 pods, dsl.Collected parts, one merge."""

import json

import pytest

from conftest import REPO, write_jsonl

pytestmark = pytest.mark.e2e

DOCS = [
    "The harbour master keeps a careful record of every ship that enters the port, noting the cargo, the crew "
    "and the weather, so that the owners can trace a delayed shipment back to the day it was loaded.",
    "A good bread starts with flour, water, salt and patience. The dough is mixed in the evening and left to rise "
    "slowly overnight in a cool room, and in the morning the baker shapes the loaves.",
    "Most garden vegetables prefer a sunny place with rich, well drained soil. Tomatoes and peppers need warmth, "
    "while lettuce and spinach grow happily in the cooler weeks of spring and autumn.",
]


def test_filter_fans_out_over_pods_and_merges_on_kfp_local(monkeypatch, tmp_path):
    import kfp.local
    from kfp import dsl

    from shipyard.components.data_filter.component import data_filter, data_filter_shard
    from shipyard.config import load_pipeline_config
    from shipyard.paths import default_tracking_uri
    from shipyard.schema import config_to_json
    from shipyard.tracking.runs import client, end_pipeline_run, start_pipeline_run

    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(3):  # every shard repeats one doc of the next shard: cross-pod duplicates
        write_jsonl(raw / f"s{i}.jsonl", [{"text": DOCS[i]}, {"text": DOCS[(i + 1) % 3]}, "{broken"])
    monkeypatch.chdir(REPO)
    base = load_pipeline_config(REPO / "pipelines/configs/ci-tiny.yaml")
    cfg = base.model_copy(update={"data_filter": base.data_filter.model_copy(update={
        "input": str(raw), "fan_out": 2, "max_docs": None,
        "steps": ["normalize", "pii", "length", "exact_dedup", "minhash_dedup"]})})

    @dsl.pipeline(name="curate-fanout")
    def curate(config: str, tracking_uri: str, parent_run_id: str, data_shards: list):
        with dsl.ParallelFor(data_shards) as shard:
            part = data_filter_shard(config=config, tracking_uri=tracking_uri, parent_run_id=parent_run_id,
                                     shard=shard)
        data_filter(config=config, tracking_uri=tracking_uri, parent_run_id=parent_run_id,
                    parts=dsl.Collected(part.outputs["part"]))

    uri = default_tracking_uri()
    parent = start_pipeline_run(uri, "curation-test", "curate-fanout", cfg,
                                str(REPO / "pipelines/configs/ci-tiny.yaml"))
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    curate(config=config_to_json(cfg), tracking_uri=uri, parent_run_id=parent, data_shards=[0, 1])
    end_pipeline_run(uri, parent, True)

    c = client(uri)
    runs = c.search_runs([c.get_run(parent).info.experiment_id],
                         filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    shards = sorted(r.data.metrics["shard"] for r in runs if r.data.tags["shipyard.stage"] == "data_filter_shard")
    assert shards == [0, 1]
    merged = next(r for r in runs if r.data.tags["shipyard.stage"] == "data_filter").data.metrics
    assert merged["read"] == 9 and merged["quarantined"] == 3 and merged["kept"] == 3
    assert merged["dropped.exact_duplicate"] == 3
    assert merged["step.normalize.chars_out"] == merged["step.pii.chars_out"] == merged["chars_in"]  # clean ASCII
    assert merged["step.minhash_dedup.chars_out"] == merged["chars_out"] == merged["chars_in"] / 2
    corpus = next((tmp_path / "kfp").rglob("corpus.jsonl"))
    kept = [json.loads(line) for line in corpus.read_text().splitlines()]
    assert sorted(r["text"] for r in kept) == sorted(DOCS)  # each distinct doc exactly once, across pods
    copies = {DOCS[i]: {f"s{i}.jsonl:1", f"s{(i - 1) % 3}.jsonl:2"} for i in range(3)}
    assert all(r["source"] in copies[r["text"]] for r in kept)
    dropped = [json.loads(line) for line in next((tmp_path / "kfp").rglob("dropped.jsonl")).read_text().splitlines()]
    assert sorted(r["step"] for r in dropped) == ["exact_dedup"] * 3
    assert {r["source"] for r in dropped} | {r["source"] for r in kept} == set().union(*copies.values())

"""The whole lifecycle pipeline on kfp.local with the ci-tiny profile, then a real chat request."""

import pytest
import yaml

from conftest import REPO, free_port

pytestmark = pytest.mark.e2e


def test_compiled_pipeline_loads_back_in_kfp(tmp_path):
    from kfp import components

    from shipyard.pipeline_runs import compile_pipeline

    out = compile_pipeline(str(REPO / "pipelines/lifecycle.py"), tmp_path / "lifecycle.yaml")
    spec = yaml.safe_load(out.read_text())
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"for-loop-1", "data-filter", "train-tokenizer", "pretrain", "finetune", "reward-model",
                          "align", "optimize", "evaluate", "rag-index", "register"}
    assert tasks["for-loop-1"]["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--data_shards"
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {"config", "tracking_uri", "parent_run_id",
                                                                   "data_shards"}
    loaded = components.load_component_from_file(str(out))
    assert loaded.name == "shipyard-lifecycle"


def test_lifecycle_runs_registers_and_serves(monkeypatch, tmp_path):
    from shipyard.demo import run_demo
    from shipyard.paths import default_tracking_uri
    from shipyard.tracking.registry import current_alias
    from shipyard.tracking.runs import client

    monkeypatch.chdir(REPO)
    uri = default_tracking_uri()
    result = run_demo("pipelines/configs/ci-tiny.yaml", port=free_port(), tracking_uri=uri, echo=lambda *_: None)

    summary = result.summary
    assert set(summary.stages) == {"data_filter_shard", "data_filter", "train_tokenizer", "pretrain", "finetune",
                                   "align", "optimize",
                                   "reward_model", "evaluate", "rag_index", "register"}
    # the models, and what the align, reward_model, optimize and pretrain stages measured themselves
    assert set(summary.eval_table) == {"base", "finetuned", "aligned", "optimized", "alignment", "reward_model",
                                       "optimization", "pretraining"}
    pretraining = summary.eval_table["pretraining"]  # held-out bits per byte beside its n-gram baselines
    assert pretraining["bigram_bpb"] < pretraining["unigram_bpb"] and pretraining["val_tokens"] > 0
    assert 0 <= summary.eval_table["reward_model"]["pairwise_accuracy"] <= 1
    assert summary.eval_table["optimization"]["size_ratio"] < 1
    suites = {"heldout.perplexity", "instructions.rougeLsum", "instructions.chrf", "instructions.exact_match",
              "preferences.reward", "toxicity.rate", "python_cloze.acc_norm", "latency.ms_per_token",
              "rag.hit_rate", "rag.mrr", "rag.context_gain"}
    for name, scores in summary.eval_table.items():
        if name in ("base", "finetuned", "aligned", "optimized"):
            assert suites <= set(scores)
    # retrieval searched the index the rag_index stage built, once: the same figures for every model
    assert len({summary.eval_table[m]["rag.hit_rate"] for m in ("base", "optimized")}) == 1
    assert summary.eval_table["optimized"]["rag.hit_rate"] >= 0.9
    assert "preferences.win_rate" in summary.eval_table["aligned"]  # against the baseline (finetuned)
    assert summary.eval_table["optimized"]["heldout.perplexity_ratio"] < 1.05  # int8 weight-only vs aligned
    judged = summary.eval_table["alignment"]  # PPO's aligned model against the instruct model
    assert {"reward_instruct", "reward_aligned", "win_rate", "toxicity_rate_aligned", "kl_to_instruct"} <= set(judged)
    assert summary.gate == "passed" and summary.version == "1"
    assert summary.decision["gate_passed"] and summary.decision["checks"]  # decision.json, read back from MLflow
    assert current_alias(uri, "shipyard-ci", "champion") == "1"
    assert current_alias(uri, "shipyard-ci", "candidate") == "1"
    assert result.model_uri == "models:/shipyard-ci@champion" and isinstance(result.answer, str)
    # the demo's last step: a Python FAQ question answered through the sidecar, with citations of
    # the index version the champion is pinned to
    assert result.rag_index == "python_faq@1" and isinstance(result.rag_answer, str)
    assert result.citations and all(c["doc_id"].startswith("faq:") for c in result.citations)
    assert result.citations[0]["doc_id"] == "faq:design.rst.txt" and "indentation" in result.citations[0]["text"]
    # every prompt app answered through the openai client on the champion (a tiny model's answers; the
    # app suites in the evaluate stage measured them on the champion too)
    apps = {a["app"]: a for a in result.apps}
    assert list(apps) == ["fewshot", "cot", "pal", "react", "stuff"]
    assert all(isinstance(a["answer"], str) for a in result.apps) and all(apps[a]["calls"] >= 1 for a in
                                                                          ("cot", "stuff")), result.apps
    for app in ("fewshot", "pal", "react"):  # their examples can outgrow this tiny model's 256 tokens: said
        assert apps[app]["calls"] >= 1 or "outgrew the model's context" in apps[app]["error"], apps[app]
    optimized = summary.eval_table["optimized"]
    assert {"word_apps.pal_accuracy", "word_apps.pal_gain", "word_apps.direct_tokens", "faq_apps.react_ms"} <= set(
        optimized)
    assert "word_apps.pal_accuracy" not in summary.eval_table["base"]  # models: [optimized]

    c = client(uri)
    parent = c.get_run(summary.parent_run_id)
    assert parent.info.status == "FINISHED"
    children = c.search_runs([parent.info.experiment_id],
                             filter_string=f"tags.mlflow.parentRunId = '{summary.parent_run_id}'")
    assert len(children) == 11 and all(r.info.status == "FINISHED" for r in children)
    by_stage = {r.data.tags["shipyard.stage"]: r for r in children}
    pre = by_stage["pretrain"]
    assert pre.data.metrics["val_loss"] < pre.data.metrics["val_loss_initial"]
    assert len(pre.data.tags["shipyard.input.corpus.sha256"]) == 64
    assert pre.data.tags["shipyard.git_sha"] and pre.data.params["max_steps"] == "40"
    assert by_stage["data_filter"].data.metrics["read"] == (
        by_stage["data_filter"].data.metrics["kept"] + by_stage["data_filter"].data.metrics["dropped"]
        + by_stage["data_filter"].data.metrics["quarantined"])
    align = c.get_metric_history(by_stage["align"].info.run_id, "reward_mean")
    assert len(align) == 6 and by_stage["align"].data.tags["shipyard.checkpoint_dir"].endswith("/align")
    opt = by_stage["optimize"].data.metrics  # measured as served, against the aligned model
    assert opt["size_ratio"] < 0.75 and opt["quantize.quantized_layers"] == 14 and opt["ms_per_token_after"] > 0
    df = by_stage["data_filter"].data.metrics
    assert df["kept"] > 1000 and df["dropped.language"] > 0 and df["dropped.near_duplicate"] > 0
    assert {"drop_table.md", "toxicity_hist.png", "stats.json"} <= {
        a.path.rsplit("/", 1)[-1] for a in c.list_artifacts(by_stage["data_filter"].info.run_id, "data_filter")}
    version = c.get_model_version("shipyard-ci", "1")
    assert version.tags["shipyard.gate"] == "passed"
    assert version.tags["shipyard.rag_index_version"] == "python_faq@1"
    assert by_stage["rag_index"].data.metrics["chunks"] > 300
    assert version.tags["shipyard.pipeline_run"] == summary.parent_run_id
    assert len(version.tags["shipyard.model_sha256"]) == 64
    # lineage on the version: raw data hashes, every stage's run, config and code
    assert len(version.tags["shipyard.data.data_filter.input.sha256"]) == 64
    assert version.tags["shipyard.data.evaluate.suites.4.data.path"].endswith("python-cloze.jsonl")
    assert version.tags["shipyard.stage_run.pretrain"] == pre.info.run_id
    assert version.tags["shipyard.git_sha"] and len(version.tags["shipyard.config_sha256"]) == 64
    assert {"report.html", "eval.json", "timings.json"} <= {
        a.path.rsplit("/", 1)[-1] for a in c.list_artifacts(by_stage["evaluate"].info.run_id, "eval")}
    from typer.testing import CliRunner

    from shipyard.cli import app

    out = CliRunner().invoke(app, ["lineage", "models:/shipyard-ci@champion", "--tracking-uri", uri])
    assert out.exit_code == 0, out.output
    assert "shipyard-ci version 1 (candidate, champion)" in out.output and "gate: passed" in out.output
    assert "rag index version: python_faq@1" in out.output
    for stage in ("data_filter", "pretrain", "align", "optimize", "evaluate", "register", "data_filter.input"):
        assert stage in out.output

    # A weaker candidate (a few training steps) against that champion: the gate measures both on the
    # same spec in the same run, fails, and leaves the champion serving.
    weak = yaml.safe_load((REPO / "pipelines/configs/ci-tiny.yaml").read_text())
    weak["data_filter"]["max_docs"] = 400
    for stage, steps in (("pretrain", 3), ("finetune", 2), ("reward_model", 2), ("align", 1)):
        weak[stage]["max_steps"] = steps
    weak["pretrain"]["warmup_steps"] = 1
    (tmp_path / "weak.yaml").write_text(yaml.safe_dump(weak))
    from shipyard.pipeline_runs import run_local

    second = run_local("shipyard.pipelines.lifecycle", str(tmp_path / "weak.yaml"), uri)
    assert second.gate == "failed" and second.version == "2"
    assert "champion" in second.eval_table  # the champion (version 1) was re-measured in this run
    assert "> 1.05 x champion" in second.gate_failures
    assert current_alias(uri, "shipyard-ci", "champion") == "1"
    assert current_alias(uri, "shipyard-ci", "candidate") == "2"
    failed = c.get_model_version("shipyard-ci", "2")
    assert failed.tags["shipyard.rag_index_version"] == "python_faq@2"  # each run indexes its own version
    assert failed.tags["shipyard.gate"] == "failed" and "champion" in failed.tags["shipyard.gate_failures"]

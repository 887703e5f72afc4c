"""Run, compile and submit pipelines: the SDK behind ``shipyard run|compile|submit``.

    from shipyard.pipeline_runs import run_local
    summary = run_local("pipelines/lifecycle.py", "pipelines/configs/tiny-cpu.yaml")

``run_local`` executes the pipeline with ``kfp.local.SubprocessRunner`` (each component in its own
process, in this environment); ``compile_pipeline`` writes the same DAG as KFP IR YAML for a
cluster, and ``submit`` sends it to a KFP API server. Tracking is identical in all three.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path

from shipyard.config import load_pipeline_config
from shipyard.paths import default_tracking_uri, state_dir
from shipyard.schema import config_to_json
from shipyard.tracking.runs import end_pipeline_run, start_pipeline_run


def load_pipeline(ref: str):
    """The KFP pipeline defined in a file (``pipelines/lifecycle.py``) or module (``shipyard.pipelines.lifecycle``)."""
    from kfp.dsl.graph_component import GraphComponent

    path = Path(ref)
    if path.suffix == ".py":
        if not path.is_file():
            raise FileNotFoundError(f"pipeline file not found: {ref}")
        installed = f"shipyard.pipelines.{path.stem}"
        if path.resolve().parent.name == "pipelines" and importlib.util.find_spec(installed):
            module = importlib.import_module(installed)
        else:
            spec = importlib.util.spec_from_file_location(f"_shipyard_pipeline_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
    else:
        module = importlib.import_module(ref)
    found = [v for v in vars(module).values() if isinstance(v, GraphComponent)]
    if len(found) != 1:
        raise ValueError(f"{ref}: expected exactly one @dsl.pipeline, found {len(found)}")
    return found[0]


@dataclass
class RunSummary:
    parent_run_id: str
    tracking_uri: str
    wall_s: float
    stages: dict[str, float] = field(default_factory=dict)  # stage -> duration_s
    eval_table: dict[str, dict[str, float]] = field(default_factory=dict)
    model_name: str | None = None
    version: str | None = None
    gate: str | None = None
    gate_failures: str | None = None
    decision: dict | None = None  # the register stage's decision.json: gate checks and stage-gain rows


def summarize(tracking_uri: str, parent_run_id: str, wall_s: float = 0.0) -> RunSummary:
    """Read a pipeline run back from MLflow: stage timings, eval table, registered version."""
    from shipyard.tracking.lineage import stage_runs
    from shipyard.tracking.runs import client

    c = client(tracking_uri)
    parent = c.get_run(parent_run_id)
    summary = RunSummary(parent_run_id, tracking_uri, wall_s)
    for child in stage_runs(c, parent):
        stage = child.data.tags.get("shipyard.stage", child.info.run_name)
        summary.stages[stage] = child.data.metrics.get("duration_s", float("nan"))
        if stage == "register":
            summary.decision = _decision(tracking_uri, child.info.run_id)
    for key, value in parent.data.metrics.items():
        model, _, metric = key.partition(".")
        summary.eval_table.setdefault(model, {})[metric] = value
    summary.model_name = parent.data.tags.get("shipyard.registered_model")
    summary.version = parent.data.tags.get("shipyard.registered_version")
    summary.gate = parent.data.tags.get("shipyard.gate")
    summary.gate_failures = parent.data.tags.get("shipyard.gate_failures") or None
    return summary


def _decision(tracking_uri: str, run_id: str) -> dict | None:
    import json

    import mlflow

    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="decision/decision.json",
                                                    tracking_uri=tracking_uri)
    except Exception:  # noqa: BLE001 - a run from before decisions were logged
        return None
    return json.loads(Path(local).read_text())


def task_count(pipeline, cfg) -> int:
    """How many tasks a local run executes: the DAG's, with the data-filter loop counted per shard."""
    tasks = pipeline.pipeline_spec.root.dag.tasks
    loops = [k for k in tasks if k.startswith("for-loop")]
    inner = sum(len(pipeline.pipeline_spec.components[tasks[k].component_ref.name].dag.tasks) for k in loops)
    return len(tasks) - len(loops) + inner * cfg.data_filter.fan_out


def pipeline_arguments(pipeline, cfg, tracking_uri: str, parent_run_id: str) -> dict:
    """The run arguments: the profile as JSON, tracking coordinates, and the data fan-out list."""
    args = {"config": config_to_json(cfg), "tracking_uri": tracking_uri, "parent_run_id": parent_run_id}
    if "data_shards" in (pipeline.component_spec.inputs or {}):
        args["data_shards"] = list(range(cfg.data_filter.fan_out))
    return args


def run_local(pipeline_ref: str, config_path: str, tracking_uri: str | None = None,
              pipeline_root: str | Path | None = None, on_start=None) -> RunSummary:
    """Run a pipeline on kfp.local under one MLflow parent run; returns its summary.

    ``on_start(parent_run_id, task_count)`` is called once the parent run exists, before any task.

    Raises:
        ConfigError: the profile is invalid (before anything runs).
        RuntimeError: a component failed (the parent run is marked FAILED).
    """
    import kfp.local

    cfg = load_pipeline_config(config_path)
    pipeline = load_pipeline(pipeline_ref)
    tracking_uri = tracking_uri or default_tracking_uri()
    parent = start_pipeline_run(tracking_uri, cfg.experiment, pipeline.name, cfg, config_path)
    root = Path(pipeline_root or state_dir() / "kfp").resolve()
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    if on_start is not None:
        on_start(parent, task_count(pipeline, cfg))
    t0 = time.perf_counter()
    ok = False
    try:
        pipeline(**pipeline_arguments(pipeline, cfg, tracking_uri, parent))
        ok = True
    except Exception as exc:
        raise RuntimeError(f"pipeline {pipeline.name} failed (MLflow run {parent}): {exc}") from exc
    finally:
        end_pipeline_run(tracking_uri, parent, ok)
    return summarize(tracking_uri, parent, time.perf_counter() - t0)


def cluster_pipeline(pipeline_ref: str, config_path: str | None = None):
    """The pipeline as a cluster runs it: placed per the profile's ``cluster:`` section when one is given."""
    pipeline = load_pipeline(pipeline_ref)
    if config_path is None:
        return pipeline, None
    from shipyard.kube.placement import place

    cfg = load_pipeline_config(config_path, resolve_paths=False)
    return place(pipeline, cfg.cluster), cfg


def compile_pipeline(pipeline_ref: str, output: str | Path, config_path: str | None = None) -> Path:
    """Compile to KFP IR YAML (loadable by ``kfp.components.load_component_from_file``); with a profile,
    GPU stages get their pool's accelerator, node selector and tolerations, and every task the Secrets."""
    from kfp import compiler

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(cluster_pipeline(pipeline_ref, config_path)[0], package_path=str(output))
    return output


def check_reachable(host: str, timeout: float = 5.0) -> str:
    """The KFP API's base URL once its healthz answers; a ConnectionError naming the URL otherwise."""
    import urllib.error
    import urllib.request

    base = host.rstrip("/")
    url = f"{base}/apis/v2beta1/healthz"
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--host {host!r}: expected an http(s):// URL of the KFP API (ml-pipeline-ui or ml-pipeline)")
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return base
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):  # behind auth: reachable, kfp.Client brings the credentials
            return base
        raise ConnectionError(f"KFP API at {url} answered {exc.code} {exc.reason}") from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectionError(f"KFP API at {url} is unreachable: {reason}") from None


def run_arguments(pipeline, cfg, tracking_uri: str, parent_run_id: str, params: dict[str, str] | None) -> dict:
    """The standard arguments plus ``params`` (``--param K=V``), checked against the pipeline's inputs."""
    args = pipeline_arguments(pipeline, cfg, tracking_uri, parent_run_id)
    inputs = pipeline.component_spec.inputs or {}
    for key in params or {}:
        if key not in inputs or key in args:
            free = sorted(set(inputs) - set(args))
            raise ValueError(f"--param {key}: {pipeline.name} takes {', '.join(free) or 'no other parameters'}")
    args.update(params or {})
    missing = sorted(k for k, spec in inputs.items() if k not in args and not spec.optional)
    if missing:
        raise ValueError(f"{pipeline.name} needs --param " + " ".join(f"{k}=..." for k in missing))
    return args


def submit(pipeline_ref: str, config_path: str, host: str, tracking_uri: str,
           experiment: str | None = None, service_account: str | None = None, run_name: str | None = None,
           namespace: str | None = None, params: dict[str, str] | None = None) -> str:
    """Submit to a KFP API server; the cluster's components log to ``tracking_uri``. Returns the KFP run id.

    Raises:
        ValueError: a bad profile, ``params`` the pipeline does not take or a missing one.
        ConnectionError: the KFP API does not answer (before anything is created anywhere).
    """
    import kfp

    pipeline, cfg = cluster_pipeline(pipeline_ref, config_path)
    run_arguments(pipeline, cfg, tracking_uri, "", params)  # fail on bad params before touching anything
    host = check_reachable(host)
    parent = start_pipeline_run(tracking_uri, cfg.experiment, pipeline.name, cfg, config_path)
    kfp_client = kfp.Client(host=host, namespace=namespace)
    result = kfp_client.create_run_from_pipeline_func(
        pipeline, arguments=run_arguments(pipeline, cfg, tracking_uri, parent, params),
        experiment_name=experiment or cfg.experiment, run_name=run_name or f"{pipeline.name}-{cfg.name}",
        namespace=namespace, pipeline_root=cfg.cluster.pipeline_root,
        service_account=service_account or cfg.cluster.service_account)
    return result.run_id


def run_status(run_id: str, host: str, namespace: str | None = None) -> dict:
    """A KFP run's state and its tasks' states (``shipyard status``)."""
    import kfp
    from kfp_server_api.exceptions import ApiException

    try:
        run = kfp.Client(host=check_reachable(host), namespace=namespace).get_run(run_id)
    except ApiException as exc:
        raise ValueError(f"KFP run {run_id!r} at {host}: {exc.status} {exc.reason}") from None
    tasks = {}
    for t in ((run.run_details.task_details if run.run_details else None) or []):
        tasks[t.display_name] = t.state
    return {"run_id": run.run_id, "name": run.display_name, "state": run.state, "error": (run.error.message if
            run.error else None), "created_at": str(run.created_at), "finished_at": str(run.finished_at),
            "tasks": tasks}


def format_summary(summary: RunSummary) -> str:
    """What ``shipyard run`` and ``make demo`` print after a run: timings, the eval table, the gate."""
    from shipyard.eval.evaluate import format_table

    lines = [f"\nPipeline finished in {summary.wall_s:.0f} s (MLflow run {summary.parent_run_id})",
             "Stage timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in summary.stages.items()),
             "\nEvaluation\n" + format_table(summary.eval_table)]
    if summary.model_name:
        lines.append(f"Registered {summary.model_name} version {summary.version}: gate {summary.gate}"
                     + (f" -> models:/{summary.model_name}@champion" if summary.gate == "passed" else ""))
        if summary.gate_failures:
            lines.append(f"Gate failures: {summary.gate_failures}")
    return "\n".join(lines)

"""MLflow runs: one parent run per pipeline run, one nested run per stage, with lineage tags.

Runs are addressed by id through ``MlflowClient`` (never the fluent "active run"), because each
stage runs in its own process (a kfp.local subprocess, or a pod on a cluster) and only the
tracking URI and the parent run id travel between them.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from shipyard.paths import sha256_path
from shipyard.tracking.tags import DATA_PREFIX


def artifact_root_for(tracking_uri: str) -> str | None:
    """Local artifact root next to a SQLite store; None lets a tracking server choose (proxied)."""
    if tracking_uri.startswith("sqlite:///"):
        root = Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts"
        root.mkdir(parents=True, exist_ok=True)
        return root.resolve().as_uri()
    return None


def client(tracking_uri: str):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)  # the registry and artifact helpers read the global URI
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def git_sha() -> str:
    """The code version: ``SHIPYARD_GIT_SHA`` (baked into images) or the checkout's HEAD."""
    if os.environ.get("SHIPYARD_GIT_SHA"):
        return os.environ["SHIPYARD_GIT_SHA"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def _log_params(c, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i : i + 100])


def start_pipeline_run(tracking_uri: str, experiment: str, pipeline: str, config, config_path: str) -> str:
    """Create the parent run of a pipeline run; returns its id (the run stays RUNNING)."""
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else c.create_experiment(
        experiment, artifact_location=artifact_root_for(tracking_uri))
    run = c.create_run(exp_id, run_name=f"{pipeline}-{config.name}", tags={
        "shipyard.pipeline": pipeline, "shipyard.profile": config.name,
        "shipyard.config_sha256": config.digest(), "shipyard.git_sha": git_sha(),
        "shipyard.config_path": config_path, **data_tags(config)})
    _log_params(c, run.info.run_id, flatten(config.model_dump(by_alias=True)))
    c.log_text(run.info.run_id, Path(config_path).read_text(encoding="utf-8"), "config.yaml")
    return run.info.run_id


def end_pipeline_run(tracking_uri: str, run_id: str, ok: bool) -> None:
    client(tracking_uri).set_terminated(run_id, "FINISHED" if ok else "FAILED")


@dataclass
class StageRun:
    """Handle a stage uses to log into its nested run."""

    client: object
    run_id: str
    parent_run_id: str
    tracking_uri: str

    def log(self, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_metric_key(k), float(v), now, step) for k, v in metrics.items()]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_parent(self, metrics: dict[str, float]) -> None:
        StageRun(self.client, self.parent_run_id, self.parent_run_id, self.tracking_uri).log(metrics)

    def tag(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def tag_parent(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.parent_run_id, k, str(v))

    def artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)


def _metric_key(key: str) -> str:
    # MLflow keys allow [A-Za-z0-9_\-. /]; TRL logs keys like "rewards/chosen".
    return "".join(ch if ch.isalnum() or ch in "_-. /" else "_" for ch in key)


@contextmanager
def stage_run(stage: str, tracking_uri: str, parent_run_id: str, config, inputs: dict[str, str],
              task_name: str | None = None) -> Iterator[StageRun]:
    """A nested MLflow run for one stage: config as params, lineage as tags, duration as a metric.

    Args:
        stage: stage name (``data_filter``...).
        tracking_uri: where the parent run lives.
        parent_run_id: the pipeline's parent run.
        config: the stage's typed config.
        inputs: input artifact paths by name; each is hashed into a ``shipyard.input.<name>.sha256`` tag.
        task_name: the KFP task name, when known.
    """
    c = client(tracking_uri)
    parent = c.get_run(parent_run_id)
    cfg_json = json.dumps(config.model_dump(by_alias=True) if config is not None else None, sort_keys=True)
    tags = {
        "mlflow.parentRunId": parent_run_id,
        "shipyard.stage": stage,
        "shipyard.kfp_task": task_name or stage,
        "shipyard.config_sha256": hashlib.sha256(cfg_json.encode()).hexdigest(),
        "shipyard.git_sha": git_sha(),
    }
    tags.update({f"shipyard.input.{k}.sha256": sha256_path(v) for k, v in inputs.items()})
    run = c.create_run(parent.info.experiment_id, run_name=stage, tags=tags)
    handle = StageRun(c, run.info.run_id, parent_run_id, tracking_uri)
    _log_params(c, run.info.run_id, flatten(json.loads(cfg_json) or {}))  # a stage the profile leaves out: no params
    t0 = time.perf_counter()
    try:
        yield handle
    except BaseException as exc:
        handle.tag({"shipyard.error": f"{type(exc).__name__}: {exc}"[:5000]})
        c.set_terminated(run.info.run_id, "FAILED")
        raise
    handle.log({"duration_s": time.perf_counter() - t0})
    c.set_terminated(run.info.run_id, "FINISHED")


def data_tags(config) -> dict[str, str]:
    """``shipyard.data.<key>.sha256`` for every data path of a pipeline profile."""
    tags, digests = {}, {}
    for key, path in config.data_paths().items():  # one file often serves several keys: hash it once
        if path not in digests:
            digests[path] = sha256_path(path)
        tags[f"{DATA_PREFIX}{key}.sha256"] = digests[path]
        tags[f"{DATA_PREFIX}{key}.path"] = str(path)[-4900:]
    return tags

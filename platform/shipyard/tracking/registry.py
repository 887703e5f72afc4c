"""MLflow model registry: register a deployable model, gate it, move aliases, roll back.

Aliases, not stages: every new version gets ``candidate``; ``champion`` moves to it only when the
gate passes. The champion it replaces is recorded (registered-model tag
``shipyard.previous_champion``) so ``shipyard models rollback`` can restore it in one step. A failed
gate leaves ``champion`` where it was and records the failing checks on the candidate.
"""

from __future__ import annotations

from pathlib import Path

from shipyard.config import GateCheck
from shipyard.tracking.runs import client

CANDIDATE, CHAMPION = "candidate", "champion"
PREVIOUS_TAG = "shipyard.previous_champion"


def check_gate(gate: list[GateCheck], table: dict[str, dict[str, float]]) -> list[str]:
    """The failing checks as readable lines; an empty list means the gate passed."""
    failures = []
    for check in gate:
        model, metric = check.metric.split(".", 1)
        value = table.get(model, {}).get(metric)
        if value is None:
            failures.append(f"{check.metric}: not measured")
        elif check.min is not None and value < check.min:
            failures.append(f"{check.metric}={value:.4g} < min {check.min}")
        elif check.max is not None and value > check.max:
            failures.append(f"{check.metric}={value:.4g} > max {check.max}")
    return failures


def log_model_version(tracking_uri: str, run_id: str, model_dir: str | Path, name: str,
                      max_new_tokens: int) -> str:
    """Log ``model_dir`` as a pyfunc model in ``run_id`` and register it; returns the version."""
    import mlflow
    from mlflow.models import infer_signature

    from shipyard import __version__

    client(tracking_uri)
    entry = Path(__file__).resolve().parents[1] / "serving" / "pyfunc_entry.py"
    signature = infer_signature(["Hello"], ["world"], params={"max_new_tokens": max_new_tokens})
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(entry),
            artifacts={"model": str(model_dir)},
            signature=signature,
            # Explicit requirements: inference would otherwise guess from the whole environment.
            pip_requirements=[f"shipyard=={__version__}", "torch==2.13.0", "transformers==5.23.*",
                              "safetensors", "mlflow==3.17.*"],
            registered_model_name=name,
        )
    return str(info.registered_model_version)


def promote(tracking_uri: str, name: str, version: str) -> str | None:
    """Point ``champion`` at ``version``; returns the version it replaced (recorded for rollback)."""
    c = client(tracking_uri)
    previous = current_alias(tracking_uri, name, CHAMPION)
    if previous == version:
        return previous
    if previous is not None:
        c.set_registered_model_tag(name, PREVIOUS_TAG, previous)
    c.set_registered_model_alias(name, CHAMPION, version)
    c.set_model_version_tag(name, version, "shipyard.promoted_over", previous or "none")
    return previous


def rollback(tracking_uri: str, name: str) -> str:
    """Move ``champion`` back to the recorded previous champion; returns that version."""
    c = client(tracking_uri)
    model = c.get_registered_model(name)
    previous = model.tags.get(PREVIOUS_TAG)
    if not previous:
        raise ValueError(f"model {name!r} has no previous champion to roll back to")
    current = current_alias(tracking_uri, name, CHAMPION)
    c.set_registered_model_alias(name, CHAMPION, previous)
    if current:
        c.set_registered_model_tag(name, PREVIOUS_TAG, current)
    return previous


def current_alias(tracking_uri: str, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client(tracking_uri).get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def resolve_model_dir(tracking_uri: str, uri: str, cache: str | Path | None = None) -> Path:
    """A local model directory for ``uri``: a directory as is, or ``models:/NAME@ALIAS`` downloaded."""
    if not uri.startswith(("models:/", "runs:/")):
        path = Path(uri)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{uri}: not a model directory (no config.json) and not a models:/ URI")
        return path
    import mlflow

    from shipyard.tracking.runs import state_dir

    client(tracking_uri)
    dst = _cache_dir(cache or state_dir() / "models", uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    found = sorted(p.parent for p in local.rglob("config.json"))
    if not found:
        raise FileNotFoundError(f"{uri}: downloaded to {local} but it holds no model (config.json)")
    return found[0]


def _cache_dir(cache: str | Path, uri: str) -> Path:
    import hashlib
    import tempfile

    path = Path(cache) / hashlib.sha256(uri.encode()).hexdigest()[:16]
    path.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=path))

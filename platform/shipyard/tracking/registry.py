"""MLflow model registry: register a deployable model, gate it, move aliases, roll back.

Aliases, not stages: every new version gets ``candidate``; ``champion`` moves to it only when the
gate passes. Each champion records the version it replaced (version tag ``shipyard.promoted_over``)
so ``shipyard models rollback`` steps back along that chain in one alias move. A failed gate leaves
``champion`` where it was and records the failing checks (and every check's numbers) on the
candidate. Registering, promoting and rolling back are safe to repeat after a crash.
"""

from __future__ import annotations

from pathlib import Path

from shipyard.config import GateCheck
from shipyard.tracking.runs import client

CANDIDATE, CHAMPION = "candidate", "champion"
PREVIOUS_TAG = "shipyard.previous_champion"
PROMOTED_OVER = "shipyard.promoted_over"
ROLLED_BACK = "shipyard.rolled_back"


def gate_results(gate: list[GateCheck], table: dict[str, dict[str, float]]) -> list[dict]:
    """Each check with its value, the champion's value and the outcome (passed / failed / skipped).

    ``table`` is the evaluate stage's: ``{model: {"<suite>.<metric>": value}}``, with a
    ``champion`` row when the current champion was measured alongside the candidate.
    """
    out = []
    for check in gate:
        model, metric = check.metric.split(".", 1)
        value = table.get(model, {}).get(metric)
        champion = table.get("champion", {}).get(metric)
        problems, notes = [], []
        if value is None:
            problems.append(f"{check.metric}: not measured")
        else:
            if check.min is not None and value < check.min:
                problems.append(f"{check.metric}={value:.4g} < min {check.min}")
            if check.max is not None and value > check.max:
                problems.append(f"{check.metric}={value:.4g} > max {check.max}")
            if check.against_champion():
                if champion is None:
                    notes.append(f"{check.metric}: no champion measured, champion bounds skipped")
                else:
                    if check.min_vs_champion is not None and value < champion + check.min_vs_champion:
                        problems.append(f"{check.metric}={value:.4g} < champion {champion:.4g} "
                                        f"{check.min_vs_champion:+g}")
                    if check.max_vs_champion is not None and value > champion + check.max_vs_champion:
                        problems.append(f"{check.metric}={value:.4g} > champion {champion:.4g} "
                                        f"{check.max_vs_champion:+g}")
                    if check.max_ratio_vs_champion is not None and value > champion * check.max_ratio_vs_champion:
                        problems.append(f"{check.metric}={value:.4g} > {check.max_ratio_vs_champion:g} x "
                                        f"champion {champion:.4g}")
        out.append({**check.model_dump(exclude_none=True), "value": value, "champion": champion,
                    "outcome": "failed" if problems else ("skipped" if notes and not _has_absolute(check) else "passed"),
                    "problems": problems, "notes": notes})
    return out


def _has_absolute(check: GateCheck) -> bool:
    return check.min is not None or check.max is not None


def check_gate(gate: list[GateCheck], table: dict[str, dict[str, float]]) -> list[str]:
    """The failing checks as readable lines; an empty list means the gate passed."""
    return [p for r in gate_results(gate, table) for p in r["problems"]]


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


def register_candidate(run, reg, table: dict, model_dir: str | Path, max_new_tokens: int,
                       config_digest: str) -> dict:
    """The register stage: log the model as a version (once per pipeline run and model), tag its
    lineage and gate results, and promote it if the gate passes.

    Safe to repeat after a crash: a version already registered for this pipeline run and model
    sha256 is reused, tags are rewritten with the same values, and ``promote`` is idempotent.
    """
    import json

    from shipyard.tracking.lineage import lineage_tags
    from shipyard.tracking.runs import sha256_path

    c, name = run.client, reg.model_name
    model_sha = sha256_path(model_dir)
    version = _existing_version(c, name, run.parent_run_id, model_sha)
    if version is None:
        version = log_model_version(run.tracking_uri, run.run_id, model_dir, name, max_new_tokens)
    c.set_registered_model_alias(name, CANDIDATE, version)
    results = gate_results(reg.gate, table)
    failures = [p for r in results for p in r["problems"]]
    tags = {
        **lineage_tags(c, run.parent_run_id),
        "shipyard.pipeline_run": run.parent_run_id,
        "shipyard.register_run": run.run_id,
        "shipyard.model_sha256": model_sha,
        "shipyard.config_sha256": config_digest,
        "shipyard.eval_report": f"runs:/{run.run_id}/eval",
        "shipyard.variant": reg.model,
        "shipyard.gate": "failed" if failures else "passed",
        "shipyard.gate_results": json.dumps(results)[:4900],
        "shipyard.gate_failures": "; ".join(failures)[:4900] if failures else "",
    }
    for k, v in tags.items():
        c.set_model_version_tag(name, version, k, v)
    previous = None if failures else promote(run.tracking_uri, name, version)
    return {"model_name": name, "version": version, "gate_passed": not failures, "failures": failures,
            "checks": results, "previous_champion": previous,
            "champion": current_alias(run.tracking_uri, name, CHAMPION)}


def _existing_version(c, name: str, pipeline_run: str, model_sha: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        versions = c.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    for v in versions:
        if v.tags.get("shipyard.pipeline_run") == pipeline_run and v.tags.get("shipyard.model_sha256") == model_sha:
            return str(v.version)
    return None


def promote(tracking_uri: str, name: str, version: str) -> str | None:
    """Point ``champion`` at ``version``; returns the version it replaced (None for the first).

    The replaced version is written on the new one (``shipyard.promoted_over``) before the alias
    moves, so a crash in between is finished by calling again, and a second call is a no-op.
    """
    c = client(tracking_uri)
    current = current_alias(tracking_uri, name, CHAMPION)
    if current == version:
        recorded = c.get_model_version(name, version).tags.get(PROMOTED_OVER, "none")
        return None if recorded == "none" else recorded
    c.set_model_version_tag(name, version, PROMOTED_OVER, current or "none")
    c.set_model_version_tag(name, version, ROLLED_BACK, "false")
    if current is not None:
        c.set_registered_model_tag(name, PREVIOUS_TAG, current)
    c.set_registered_model_alias(name, CHAMPION, version)
    return current


def rollback(tracking_uri: str, name: str, from_version: str | None = None) -> str:
    """Move ``champion`` back to the version the current champion replaced; returns the new champion.

    Each call steps back once along the promotion chain (v3 -> v2 -> v1). With ``from_version``,
    the call is idempotent: if that version was already rolled back, nothing moves.
    """
    c = client(tracking_uri)
    current = current_alias(tracking_uri, name, CHAMPION)
    if current is None:
        raise ValueError(f"model {name!r} has no champion to roll back")
    if from_version is not None and current != str(from_version):
        from mlflow.exceptions import MlflowException

        try:
            asked = c.get_model_version(name, str(from_version))
        except MlflowException:
            raise ValueError(f"model {name} has no version {from_version}") from None
        if asked.tags.get(ROLLED_BACK) == "true":
            return current  # already done (a repeated call)
        raise ValueError(f"model {name!r}: champion is version {current}, not {from_version}")
    previous = c.get_model_version(name, current).tags.get(PROMOTED_OVER, "none")
    if previous == "none":
        raise ValueError(f"model {name!r} has no previous champion to roll back to "
                         f"(version {current} was the first champion)")
    c.set_model_version_tag(name, current, ROLLED_BACK, "true")
    c.set_registered_model_alias(name, CHAMPION, previous)
    before = c.get_model_version(name, previous).tags.get(PROMOTED_OVER, "none")
    c.set_registered_model_tag(name, PREVIOUS_TAG, "" if before == "none" else before)
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
        if (path / "config.json").exists():
            return path
        # e.g. /mnt/models as KServe's storage initializer leaves a logged MLflow model: MLmodel at
        # the top, the weights under artifacts/model/
        found = sorted({p.parent for p in path.rglob("config.json")}) if path.is_dir() else []
        if len(found) == 1:
            return found[0]
        raise FileNotFoundError(f"{uri}: not a model directory (no config.json" +
                                (f"; {len(found)} candidates under it" if found else "") + ") and not a models:/ URI")
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


RAG_INDEX_TAG = "shipyard.rag_index_version"


def model_version(tracking_uri: str, uri: str) -> tuple[str, str] | None:
    """(name, version) behind ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``; None for a directory."""
    from shipyard.tracking.lineage import parse_model_uri

    if not uri.startswith("models:/"):
        return None
    name, alias, version = parse_model_uri(uri)
    if alias:
        version = current_alias(tracking_uri, name, alias)
        if version is None:
            raise ValueError(f"{uri}: model {name!r} has no alias {alias!r}")
    return name, version


def pin_rag_index(tracking_uri: str, name: str, version: str, ref: str) -> None:
    """Tie RAG index version ``ref`` (NAME@N) to a model version: the pair evaluated is the pair served."""
    client(tracking_uri).set_model_version_tag(name, version, RAG_INDEX_TAG, ref)


def pinned_rag_index(tracking_uri: str, uri: str) -> str | None:
    """The index version a registered model version is pinned to, if any."""
    found = model_version(tracking_uri, uri)
    if found is None:
        return None
    return client(tracking_uri).get_model_version(*found).tags.get(RAG_INDEX_TAG) or None

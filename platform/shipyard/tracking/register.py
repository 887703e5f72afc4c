"""The register stage: log the deployable model as a registry version, tag its lineage, gate it.

The gate decides on the evaluate stage's table: absolute bounds, and bounds against the champion
measured in the same run. A pass promotes the version (``shipyard.tracking.registry.promote``); a
failure leaves the champion serving and records every check's numbers on the candidate.
"""

from __future__ import annotations

from pathlib import Path

from shipyard.tracking.register_config import GateCheck, RegisterConfig
from shipyard.tracking.registry import current_alias, promote
from shipyard.tracking.runs import client
from shipyard.tracking.tags import CANDIDATE, CHAMPION


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
                    "outcome": "failed" if problems else (
                        "skipped" if notes and not _has_absolute(check) else "passed"),
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


def register_candidate(run, reg: RegisterConfig, table: dict, model_dir: str | Path, max_new_tokens: int,
                       config_digest: str) -> dict:
    """The register stage: log the model as a version (once per pipeline run and model), tag its
    lineage and gate results, and promote it if the gate passes.

    Safe to repeat after a crash: a version already registered for this pipeline run and model
    sha256 is reused, tags are rewritten with the same values, and ``promote`` is idempotent.
    """
    import json

    from shipyard.paths import sha256_path
    from shipyard.tracking.lineage import lineage_tags

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

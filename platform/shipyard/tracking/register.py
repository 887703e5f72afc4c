"""The register stage: log the deployable model as a registry version, tag its lineage, gate it.

The gate decides on the evaluate stage's table: absolute bounds, and bounds against the champion
measured in the same run. A pass promotes the version (``shipyard.tracking.registry.promote``); a
failure leaves the champion serving and records every check's numbers on the candidate.
"""

from __future__ import annotations

from pathlib import Path

from shipyard.tracking.register_config import BOUNDS, GateCheck, RegisterConfig
from shipyard.tracking.registry import current_alias, promote
from shipyard.tracking.runs import client
from shipyard.tracking.tags import CANDIDATE, CHAMPION


def gate_results(gate: list[GateCheck], table: dict[str, dict[str, float]],
                 rows: dict[str, dict[str, list]] | None = None) -> list[dict]:
    """Each check with its value, the champion's value and the outcome (passed / failed / skipped).

    ``table`` is the evaluate stage's: ``{model: {"<suite>.<metric>": value}}``, with a
    ``champion`` row when the current champion was measured alongside the candidate. ``rows`` are its
    per-row scores (``eval_rows.json``), which the interval bounds need.
    """
    rows = rows or {}
    out = []
    for check in gate:
        model, metric = check.metric.split(".", 1)
        value = table.get(model, {}).get(metric)
        champion = table.get("champion", {}).get(metric)
        problems, notes, extra = [], [], {}
        if value is None:
            problems.append(f"{check.metric}: not measured")
        else:
            problems += _absolute(check, value)
            if check.min_ci_low is not None:
                problems += _ci_low(check, rows.get(model, {}).get(metric), extra)
            for other in check.vs:
                problems += _paired(check, other, table, rows, extra)
            problems += _reward_model_at_chance(check, table)
            if check.against_champion():
                if champion is None:
                    notes.append(f"{check.metric}: no champion measured, champion bounds skipped")
                else:
                    problems += _vs_champion(check, value, champion)
        out.append({**check.model_dump(exclude_none=True, exclude_defaults=True), "metric": check.metric,
                    "value": value, "champion": champion, **extra,
                    "outcome": "failed" if problems else (
                        "skipped" if notes and not _has_absolute(check) else "passed"),
                    "problems": problems, "notes": notes})
    return out


def _reward_model_at_chance(check: GateCheck, table: dict) -> list[str]:
    """An align row fails when the alignment was judged by, or optimized against, a reward model at chance
    (``REWARD_MODEL_FLOOR``: a profile may switch align's own refusal off to exercise PPO, but the gate
    still refuses the claim)."""
    from shipyard.train.align_config import REWARD_MODEL_FLOOR

    if check.stage != "align" and not check.metric.startswith("alignment."):
        return []
    low = table.get("alignment", {}).get("reward_model_accuracy_ci95_low")
    if low is None or low > REWARD_MODEL_FLOOR:
        return []
    return [f"{check.metric}: the alignment used a reward model at chance (held-out accuracy 95% CI low "
            f"{low:.3f} <= {REWARD_MODEL_FLOOR}): no alignment claim"]


def _absolute(check: GateCheck, value: float) -> list[str]:
    out = []
    if check.min is not None and value < check.min:
        out.append(f"{check.metric}={value:.4g} < min {check.min}")
    if check.max is not None and value > check.max:
        out.append(f"{check.metric}={value:.4g} > max {check.max}")
    return out


def _ci_low(check: GateCheck, metric_rows, extra: dict) -> list[str]:
    from shipyard.eval.stats import metric_ci

    if not metric_rows:
        return [f"{check.metric}: no per-row scores to bound its interval"]
    lo, hi = metric_ci(check.metric, metric_rows)
    extra["ci95"] = [lo, hi]
    if lo <= check.min_ci_low:
        return [f"{check.metric} 95% CI [{lo:.4g}, {hi:.4g}] does not lie above {check.min_ci_low}"]
    return []


def _paired(check: GateCheck, other: str, table: dict, rows: dict, extra: dict) -> list[str]:
    """metric vs ``other`` on the same rows: the paired interval of the difference, and the point ratio."""
    from shipyard.eval.stats import metric_diff_ci

    model, metric = check.metric.split(".", 1)
    o_model, o_metric = other.split(".", 1)
    value, base = table.get(model, {}).get(metric), table.get(o_model, {}).get(o_metric)
    if base is None:
        return [f"{check.metric} vs {other}: {other} not measured"]
    cmp = extra.setdefault("vs_results", [])
    entry = {"vs": other, "vs_value": base, "diff": value - base}
    cmp.append(entry)
    out = []
    entry["ratio"] = value / base if base else float("inf")
    if check.max_ratio is not None and entry["ratio"] > check.max_ratio:
        out.append(f"{check.metric}={value:.4g} is {entry['ratio']:.4g} x {other}={base:.4g} > {check.max_ratio}")
    if check.min_ratio is not None and entry["ratio"] < check.min_ratio:
        out.append(f"{check.metric}={value:.4g} is {entry['ratio']:.4g} x {other}={base:.4g} < {check.min_ratio}")
    a, b = rows.get(model, {}).get(metric), rows.get(o_model, {}).get(o_metric)
    if a and b and len(a) == len(b):  # the paired interval is reported wherever there are rows
        entry["diff_ci95"] = list(metric_diff_ci(check.metric, a, b))
    if check.min_diff is None and check.max_diff is None:
        return out
    if "diff_ci95" not in entry:
        return out + [f"{check.metric} vs {other}: no per-row scores to compare paired"]
    lo, hi = entry["diff_ci95"]
    span = f"{check.metric} - {other} = {value - base:+.4g}, 95% CI [{lo:+.4g}, {hi:+.4g}]"
    if check.min_diff is not None and lo <= check.min_diff:
        out.append(f"{span} does not lie above {check.min_diff:+g}")
    if check.max_diff is not None and hi >= check.max_diff:
        out.append(f"{span} does not lie below {check.max_diff:+g}")
    return out


def _vs_champion(check: GateCheck, value: float, champion: float) -> list[str]:
    out = []
    if check.min_vs_champion is not None and value < champion + check.min_vs_champion:
        out.append(f"{check.metric}={value:.4g} < champion {champion:.4g} {check.min_vs_champion:+g}")
    if check.max_vs_champion is not None and value > champion + check.max_vs_champion:
        out.append(f"{check.metric}={value:.4g} > champion {champion:.4g} {check.max_vs_champion:+g}")
    if check.max_ratio_vs_champion is not None and value > champion * check.max_ratio_vs_champion:
        out.append(f"{check.metric}={value:.4g} > {check.max_ratio_vs_champion:g} x champion {champion:.4g}")
    return out


def _has_absolute(check: GateCheck) -> bool:
    return any(getattr(check, k) is not None for k in BOUNDS if not k.endswith("_vs_champion"))


def stage_rows(results: list[dict]) -> list[dict]:
    """The stage-gain table: each check that names a ``stage``, as input model -> output model with the
    paired interval of the difference (against the strongest input where it is compared with several)."""
    out = []
    for r in results:
        if "stage" not in r:
            continue
        model = r["metric"].split(".", 1)[0]
        row = {"stage": r["stage"], "metric": r["metric"], "input_model": None, "output_model": model,
               "input_value": None, "output_value": r["value"], "diff_ci95": None,
               "passed": r["outcome"] == "passed"}
        if r.get("ci95") and "min_ci_low" in r:  # against its floor: the interval of value - floor
            floor = r["min_ci_low"]
            row.update(input_model="floor", input_value=floor, diff_ci95=[r["ci95"][0] - floor, r["ci95"][1] - floor])
        if r.get("vs_results"):  # the closest competitor: the one whose interval comes nearest the bound
            near = min(r["vs_results"], key=lambda e: abs(e["diff"]))
            row.update(input_model=near["vs"].split(".", 1)[0], input_value=near["vs_value"],
                       diff_ci95=near.get("diff_ci95"), input_metric=near["vs"])
        out.append(row)
    return out


def check_gate(gate: list[GateCheck], table: dict[str, dict[str, float]],
               rows: dict[str, dict[str, list]] | None = None) -> list[str]:
    """The failing checks as readable lines; an empty list means the gate passed."""
    return [p for r in gate_results(gate, table, rows) for p in r["problems"]]


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
                       config_digest: str, rows: dict | None = None) -> dict:
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
    results = gate_results(reg.gate, table, rows)
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
            "checks": results, "stages": stage_rows(results), "previous_champion": previous,
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

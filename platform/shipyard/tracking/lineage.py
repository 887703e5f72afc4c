"""Lineage: from a registered model version back to the raw data, through every stage run.

    shipyard lineage models:/shipyard-tiny@champion

The pipeline's parent run carries the sha256 of every data file of the profile
(``shipyard.data.<key>.sha256``), the config hash and the git sha; each stage run carries the
sha256 of its input artifacts. The register stage copies the data hashes and the stage run ids
onto the model version, so the chain survives without the runs' search.
"""

from __future__ import annotations

from shipyard.tracking.tags import DATA_PREFIX, RAG_INDEX_TAG, STAGE_PREFIX, parse_model_uri


def stage_runs(c, parent) -> list:
    """The stage runs of a pipeline run (its parent ``Run``), in the order they started."""
    runs = c.search_runs([parent.info.experiment_id],
                         filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=1000)
    return sorted(runs, key=lambda r: r.info.start_time)


def lineage_tags(c, parent_run_id: str) -> dict[str, str]:
    """What a model version carries: the data hashes, config hash, git sha and every stage's run id."""
    parent = c.get_run(parent_run_id)
    tags = {k: v for k, v in parent.data.tags.items() if k.startswith(DATA_PREFIX)}
    tags["shipyard.git_sha"] = parent.data.tags.get("shipyard.git_sha", "")
    tags["shipyard.profile"] = parent.data.tags.get("shipyard.profile", "")
    for r in stage_runs(c, parent):
        stage = r.data.tags.get("shipyard.stage", r.info.run_name)
        key = f"{STAGE_PREFIX}{stage}"
        tags[key] = (tags[key] + "," if key in tags else "") + r.info.run_id  # fan-out: several shards
    return tags


def lineage(tracking_uri: str, uri: str) -> dict:
    """The chain behind a registered model version, as plain data."""
    from mlflow.exceptions import MlflowException

    from shipyard.tracking.runs import client

    c = client(tracking_uri)
    name, alias, version = parse_model_uri(uri)
    try:
        mv = c.get_model_version_by_alias(name, alias) if alias else c.get_model_version(name, version)
    except MlflowException as exc:
        raise ValueError(f"{uri}: not found in the registry at {tracking_uri} ({exc.message})") from None
    tags = mv.tags
    parent_id = tags.get("shipyard.pipeline_run")
    if not parent_id:
        raise ValueError(f"{uri}: version {mv.version} has no shipyard.pipeline_run tag (not registered by a pipeline)")
    parent = c.get_run(parent_id)
    stages = []
    for r in stage_runs(c, parent):
        stages.append({
            "stage": r.data.tags.get("shipyard.stage", r.info.run_name), "run_id": r.info.run_id,
            "status": r.info.status, "seconds": r.data.metrics.get("duration_s"),
            "inputs": {k.removeprefix("shipyard.input.").removesuffix(".sha256"): v
                       for k, v in r.data.tags.items() if k.startswith("shipyard.input.")},
        })
    aliases = [a for a in (c.get_registered_model(name).aliases or {}) if
               str(c.get_registered_model(name).aliases[a]) == str(mv.version)]
    return {
        "model": name, "version": str(mv.version), "aliases": sorted(aliases),
        "model_sha256": tags.get("shipyard.model_sha256"), "variant": tags.get("shipyard.variant"),
        "gate": tags.get("shipyard.gate"), "gate_failures": tags.get("shipyard.gate_failures") or None,
        "promoted_over": tags.get("shipyard.promoted_over"), "eval_report": tags.get("shipyard.eval_report"),
        "rag_index_version": tags.get(RAG_INDEX_TAG),
        "pipeline_run": parent_id, "profile": parent.data.tags.get("shipyard.profile"),
        "config_sha256": tags.get("shipyard.config_sha256"), "git_sha": parent.data.tags.get("shipyard.git_sha"),
        "data": {k.removeprefix(DATA_PREFIX).removesuffix(".sha256"): v
                 for k, v in sorted(tags.items()) if k.startswith(DATA_PREFIX) and k.endswith(".sha256")},
        "data_paths": {k.removeprefix(DATA_PREFIX).removesuffix(".path"): v
                       for k, v in tags.items() if k.startswith(DATA_PREFIX) and k.endswith(".path")},
        "stages": stages,
    }


def format_lineage(info: dict) -> str:
    """Human-readable chain, model first, raw data last."""
    short = lambda h: (h or "-")[:12]
    lines = [f"{info['model']} version {info['version']}"
             + (f" ({', '.join(info['aliases'])})" if info["aliases"] else "")
             + f"  variant={info['variant']}  model sha256 {short(info['model_sha256'])}",
             f"  gate: {info['gate']}" + (f" — {info['gate_failures']}" if info["gate_failures"] else "")
             + (f"; promoted over version {info['promoted_over']}"
                if info["promoted_over"] not in (None, "none") else ""),
             f"  eval report: {info['eval_report']}"]
    if info.get("rag_index_version"):
        lines.append(f"  rag index version: {info['rag_index_version']}")
    lines.append(f"  pipeline run {info['pipeline_run']}  profile {info['profile']}  "
                 f"config sha256 {short(info['config_sha256'])}  git {short(info['git_sha'])}")
    lines.append("  stages (first to last):")
    for s in info["stages"]:
        ins = ", ".join(f"{k} {short(v)}" for k, v in s["inputs"].items()) or "-"
        secs = f"{s['seconds']:.1f}s" if s["seconds"] is not None else "?"
        lines.append(f"    {s['stage']:<18} run {s['run_id'][:12]}  {s['status'].lower():<8} {secs:>7}  inputs: {ins}")
    lines.append("  data:")
    for key, digest in info["data"].items():
        path = info["data_paths"].get(key, "")
        lines.append(f"    {key:<30} sha256 {short(digest)}  {path}")
    return "\n".join(lines) + "\n"

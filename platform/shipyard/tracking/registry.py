"""MLflow model registry: move aliases, roll back, resolve and pin model versions.

Aliases, not stages: every new version gets ``candidate`` (``shipyard.tracking.register``); ``champion``
moves to it only when the gate passes. Each champion records the version it replaced (version tag
``shipyard.promoted_over``) so ``shipyard models rollback`` steps back along that chain in one alias
move. A failed gate leaves ``champion`` where it was and records the failing checks (and every check's
numbers) on the candidate. Registering, promoting and rolling back are safe to repeat after a crash.
"""

from __future__ import annotations

from pathlib import Path

from shipyard.tracking.runs import client
from shipyard.tracking.tags import CHAMPION, PREVIOUS_TAG, PROMOTED_OVER, RAG_INDEX_TAG, ROLLED_BACK, parse_model_uri


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

    from shipyard.paths import state_dir

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


def model_version(tracking_uri: str, uri: str) -> tuple[str, str] | None:
    """(name, version) behind ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``; None for a directory."""
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

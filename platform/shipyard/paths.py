"""Where local state lives, and content hashes of files: the lowest layer's paths (no MLflow, no Feast)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def state_dir() -> Path:
    """Where local runs keep their state: ``$SHIPYARD_HOME``, else ``./.shipyard``."""
    path = Path(os.environ.get("SHIPYARD_HOME", ".shipyard")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite store in ``state_dir()``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{state_dir() / 'mlflow.db'}"


def sha256_path(path: str | Path) -> str:
    """Content hash of a file, or of a directory (relative paths and bytes, in sorted order)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()

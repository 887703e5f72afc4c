"""Shared by the benchmark scripts: a quiet, seeded start and the default real model."""

from __future__ import annotations

import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup(prefix: str, model: Path | None) -> tuple[Path, Path]:
    """(work dir, model dir): ``model`` as given, else SmolLM2-135M-Instruct converted from its PyPI wheel."""
    import torch

    from shipyard.stages import quiet_libraries

    quiet_libraries()
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix=f"shipyard-bench-{prefix}-"))
    if model is None:
        from shipyard.models.select import run_select
        from shipyard.models.select_config import BaseModelConfig

        model = work / "smollm2"
        run_select(BaseModelConfig(type="smollm2"), model)
    return work, model


def header(model: Path) -> str:
    import torch

    return f"model: {model}  (torch {torch.__version__}, {torch.get_num_threads()} threads)"

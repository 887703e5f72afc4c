"""A torchrun worker: one rank of a distributed pretrain run.

    torchrun --standalone --nproc_per_node 2 -m shipyard.train.launch <output>/.launch.json

``run_pretrain`` writes the JSON (config and paths) and starts torchrun; on Kubernetes the
Kubeflow Trainer TrainJob runs this same module in the same image. Rank 0 appends its metrics to
a JSONL file the launching process forwards to MLflow.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m shipyard.train.launch <launch.json>", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    from shipyard.train.pretrain import train_process
    from shipyard.train.pretrain_config import PretrainConfig

    cfg = PretrainConfig.model_validate(spec["config"])
    rank = int(os.environ.get("RANK", "0"))
    metrics_file = Path(spec["metrics"]) if spec.get("metrics") else None

    def log(metrics: dict[str, float], step: int) -> None:
        if rank == 0 and metrics_file is not None:
            with metrics_file.open("a") as f:
                f.write(json.dumps({"step": step, "metrics": metrics}) + "\n")

    train_process(cfg, spec["corpus"], spec["tokenizer"], spec["output"], log, spec["checkpoint_dir"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

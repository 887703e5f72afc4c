"""pretrain with ``nodes > 1``: hand the run to a Kubeflow Trainer TrainJob and collect its model.

The KFP pod and the trainer pods share a ReadWriteMany volume mounted at the same path; inputs,
the launch spec, checkpoints, rank 0's metrics and the model all pass through it. The run key
(the pipeline's parent run) names the folder and the job, so a retried KFP step finds the same
job and the same checkpoints instead of starting over.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from shipyard.train.loop import MetricsLogger


def run_on_trainjob(cfg, corpus_dir, tokenizer_dir, output_dir, log: MetricsLogger, run_key: str,
                    image: str, api=None, echo=print) -> dict[str, float]:
    """Run ``cfg`` (nodes > 1) as a TrainJob; copy the model into ``output_dir``; return its metrics."""
    from shipyard.kube.trainjob import build_train_job, job_name, submit_and_wait
    from shipyard.train.pretrain import RESULT_FILE

    mount = Path(cfg.trainjob.workspace_mount)
    if not mount.is_dir():
        raise RuntimeError(f"pretrain.trainjob.workspace_mount {mount} is not mounted in this pod: mount the PVC "
                           f"{cfg.trainjob.workspace_claim!r} there (the trainer pods mount it at the same path)")
    work = mount / "shipyard" / run_key / "pretrain"
    for src, name in ((corpus_dir, "corpus"), (tokenizer_dir, "tokenizer")):
        shutil.copytree(src, work / name, dirs_exist_ok=True)
    spec = {"config": cfg.model_dump(), "corpus": str(work / "corpus"), "tokenizer": str(work / "tokenizer"),
            "output": str(work / "model"), "checkpoint_dir": str(work / "checkpoints"),
            "metrics": str(work / "metrics.jsonl")}
    (work / "spec.json").write_text(json.dumps(spec))
    (work / "metrics.jsonl").unlink(missing_ok=True)
    obj = build_train_job(job_name(run_key), image, str(work / "spec.json"), cfg,
                          labels={"shipyard.io/run": run_key[:63]})
    submit_and_wait(obj, api=api, log=echo)
    if (work / "metrics.jsonl").exists():
        for line in (work / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            log(rec["metrics"], rec["step"])
    shutil.copytree(work / "model", output_dir, dirs_exist_ok=True)
    metrics = json.loads((Path(output_dir) / RESULT_FILE).read_text())
    return {**metrics, "nodes": cfg.nodes, "processes": cfg.nodes * cfg.nproc_per_node}

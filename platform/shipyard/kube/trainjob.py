"""Kubeflow Trainer v2 TrainJobs: multi-node pretraining on the same module, in the same image.

    pretrain: {nodes: 2, nproc_per_node: 8, trainjob: {workspace_claim: shipyard-workspace, gpus_per_node: 8}}

The pretrain stage (running in its KFP pod) copies its inputs to a ReadWriteMany volume, creates
a TrainJob on the ``torch-distributed`` runtime whose trainer runs
``torchrun -m shipyard.train.launch <spec>`` (the runtime's torch plugin sets PET_NNODES,
PET_NPROC_PER_NODE, PET_NODE_RANK and the master address, which torchrun reads), waits for the
job's Complete/Failed condition, surfaces the failure message, and copies the model back into
its KFP output. Checkpoints live on the same volume, so a re-run resumes.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

from shipyard.kube.client import current_namespace, custom_objects_api
from shipyard.schema import MetricsLogger

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
CONTAINER = "node"  # the torch-distributed runtime's replicated job and container are both named "node"


def job_name(key: str) -> str:
    """A DNS-1035 name (≤ 63 chars) derived from a pipeline run key."""
    name = re.sub(r"[^a-z0-9-]+", "-", f"shipyard-pretrain-{key}".lower()).strip("-")
    return name[:63].rstrip("-")


def build_train_job(name: str, image: str, spec_path: str, cfg, labels: dict[str, str] | None = None) -> dict:
    """The TrainJob object for a pretrain run described by the launch spec at ``spec_path``.

    Args:
        name: metadata.name.
        image: the Shipyard image (CUDA variant when ``gpus_per_node > 0``).
        spec_path: the launch JSON on the shared volume (config and paths under the mount).
        cfg: the PretrainConfig (nodes, nproc_per_node and the ``trainjob`` section).
    """
    tj = cfg.trainjob
    limits = {"cpu": tj.cpu, "memory": tj.memory}
    if tj.gpus_per_node:
        limits["nvidia.com/gpu"] = str(tj.gpus_per_node)
    pod: dict = {
        "containers": [{"name": CONTAINER, "volumeMounts": [{"name": "workspace", "mountPath": tj.workspace_mount},
                                                             {"name": "tmp", "mountPath": "/tmp"},
                                                             {"name": "shm", "mountPath": "/dev/shm"}],
                        "env": [{"name": "HOME", "value": "/tmp"}],
                        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                                            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}}],
        # scratch on a read-only root; /dev/shm for the DataLoader workers and NCCL
        "volumes": [{"name": "workspace", "persistentVolumeClaim": {"claimName": tj.workspace_claim}},
                    {"name": "tmp", "emptyDir": {"sizeLimit": "10Gi"}},
                    {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}],
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
    }
    if tj.node_selector:
        pod["nodeSelector"] = dict(tj.node_selector)
    if tj.gpus_per_node:
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainJob",
        "metadata": {"name": name, **({"namespace": tj.namespace} if tj.namespace else {}),
                     "labels": {"app.kubernetes.io/part-of": "shipyard", "app.kubernetes.io/component": "pretrain",
                                **(labels or {})}},
        "spec": {
            "runtimeRef": {"name": tj.runtime, "apiGroup": GROUP, "kind": "ClusterTrainingRuntime"},
            "activeDeadlineSeconds": tj.timeout_s,
            "trainer": {
                "image": image,
                "command": ["torchrun", "-m", "shipyard.train.launch", spec_path],
                "numNodes": cfg.nodes,
                "numProcPerNode": cfg.nproc_per_node,
                "resourcesPerNode": {"requests": dict(limits), "limits": dict(limits)},
                "env": [{"name": "OMP_NUM_THREADS", "value": "1"}, {"name": "SHIPYARD_TRAINJOB", "value": name}],
            },
            "runtimePatches": [{
                "manager": "shipyard.io/pretrain",
                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
                    {"name": CONTAINER, "template": {"spec": {"template": {
                        "metadata": {"labels": {"app.kubernetes.io/part-of": "shipyard",
                                                "app.kubernetes.io/component": "trainer"}},
                        "spec": pod}}}}]}}},
            }],
        },
    }


def outcome(obj: dict) -> tuple[str, str]:
    """('running' | 'succeeded' | 'failed', message) from a TrainJob's status conditions."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return "succeeded", cond.get("message", "")
        if cond.get("type") == "Failed":
            return "failed", f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}".strip()
    return "running", ""


def submit_and_wait(obj: dict, poll_s: float = 15.0, log=print, api=None) -> dict:
    """Create the TrainJob (or attach to it if it exists: a retried pod), wait for the outcome.

    Raises:
        RuntimeError: the job failed (with the controller's reason and message) or timed out.
    """
    api = api or custom_objects_api("pretrain.nodes > 1 submits a TrainJob and needs a cluster")
    ns = obj["metadata"].get("namespace") or current_namespace()
    name = obj["metadata"]["name"]
    from kubernetes.client.exceptions import ApiException

    try:
        api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, obj)
        log(f"TrainJob {ns}/{name} created: {obj['spec']['trainer']['numNodes']} nodes x "
            f"{obj['spec']['trainer']['numProcPerNode']} processes")
    except ApiException as exc:
        if exc.status != 409:
            raise RuntimeError(f"creating TrainJob {ns}/{name} failed: {exc.status} {exc.reason}: {exc.body}") from None
        log(f"TrainJob {ns}/{name} exists (a retried step): waiting for it")
    deadline = time.monotonic() + obj["spec"].get("activeDeadlineSeconds", 7 * 86_400) + 600
    while time.monotonic() < deadline:
        current = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        state, message = outcome(current)
        if state == "succeeded":
            log(f"TrainJob {ns}/{name} complete")
            return current
        if state == "failed":
            raise RuntimeError(f"TrainJob {ns}/{name} failed: {message} (kubectl -n {ns} logs -l "
                               f"jobset.sigs.k8s.io/jobset-name={name})")
        time.sleep(poll_s)
    raise RuntimeError(f"TrainJob {ns}/{name} did not finish before its deadline")


def run_on_trainjob(cfg, corpus_dir, tokenizer_dir, output_dir, log: MetricsLogger, run_key: str,
                    image: str, api=None, echo=print) -> dict[str, float]:
    """Run ``cfg`` (nodes > 1) as a TrainJob; copy the model into ``output_dir``; return its metrics."""
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

"""TrainJob: the object validates against the upstream CRD; the stage submits it, waits, collects the model."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, TINY_PRETRAIN, free_port
from shipyard.train.pretrain_config import PretrainConfig

pytestmark = pytest.mark.k8s
CRD = Path(__file__).parents[1] / "schemas" / "crds" / "trainer.kubeflow.org_trainjobs.yaml"


def _validate(obj: dict) -> None:
    import jsonschema

    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if f"{crd['spec']['group']}/{v['name']}" == obj["apiVersion"])
    assert obj["kind"] == crd["spec"]["names"]["kind"]
    jsonschema.validate(obj, version["schema"]["openAPIV3Schema"])


def _cfg(**kw) -> PretrainConfig:
    tj = {"workspace_claim": "shipyard-workspace", **kw.pop("trainjob", {})}
    return PretrainConfig(**{**TINY_PRETRAIN, "max_steps": 6, "checkpoint_every": 3, **kw}, trainjob=tj)


def test_trainjob_validates_against_the_kubeflow_trainer_crd():
    from shipyard.kube.trainjob import build_train_job, job_name

    cfg = PretrainConfig(nodes=4, nproc_per_node=8, trainjob={
        "workspace_claim": "ws", "gpus_per_node": 8, "node_selector": {"cloud.google.com/gke-accelerator": "h100"}})
    obj = build_train_job(job_name("0123456789abcdef0123456789abcdef" * 2), "img:1", "/workspace/x/spec.json", cfg)
    _validate(obj)
    assert len(obj["metadata"]["name"]) <= 63
    trainer = obj["spec"]["trainer"]
    assert trainer["numNodes"] == 4 and trainer["numProcPerNode"] == 8
    assert trainer["command"] == ["torchrun", "-m", "shipyard.train.launch", "/workspace/x/spec.json"]
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    pod = obj["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    spec = pod["template"]["spec"]["template"]["spec"]
    assert spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == "ws"
    assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "h100"}
    with pytest.raises(Exception, match="is not of type 'integer'"):  # the schema really is enforced
        _validate({**obj, "spec": {**obj["spec"], "trainer": {**trainer, "numNodes": "four"}}})


def test_multi_node_needs_a_shared_volume():
    with pytest.raises(ValueError, match="set trainjob.workspace_claim"):
        PretrainConfig(nodes=2)


class LocalTrainerController:
    """Stands in for the API server + Trainer controller: runs the TrainJob's trainer command once
    per node, with the PET_* variables the torch-distributed runtime sets, on 127.0.0.1."""

    def __init__(self):
        self.jobs, self.procs = {}, {}

    def create_namespaced_custom_object(self, group, version, ns, plural, body):
        trainer = body["spec"]["trainer"]
        port = free_port()
        self.jobs[body["metadata"]["name"]] = body
        self.procs[body["metadata"]["name"]] = [subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", *trainer["command"][1:]], cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **{e["name"]: e["value"] for e in trainer["env"]},
                 "PET_NNODES": str(trainer["numNodes"]), "PET_NPROC_PER_NODE": str(trainer["numProcPerNode"]),
                 "PET_NODE_RANK": str(rank), "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port)})
            for rank in range(trainer["numNodes"])]

    def get_namespaced_custom_object(self, group, version, ns, plural, name):
        procs = self.procs[name]
        codes = [p.poll() for p in procs]
        obj = dict(self.jobs[name])
        if any(c not in (None, 0) for c in codes):
            out = "".join(p.communicate()[0] for p in procs)
            obj["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "TrainerFailed",
                                             "message": out[-2000:]}]}
        elif all(c == 0 for c in codes):
            obj["status"] = {"conditions": [{"type": "Complete", "status": "True", "message": "done"}]}
        return obj


def test_stage_runs_two_nodes_through_a_trainjob(tiny_corpus, tiny_tokenizer, tmp_path):
    from shipyard.kube import trainjob
    from shipyard.kube.trainjob import run_on_trainjob

    cfg = _cfg(nodes=2, trainjob={"workspace_mount": str(tmp_path / "ws")})
    (tmp_path / "ws").mkdir()
    logged, said = [], []
    api = LocalTrainerController()
    orig = trainjob.time.sleep
    trainjob.time.sleep = lambda s: orig(0.2)
    try:
        out = run_on_trainjob(cfg, tiny_corpus, tiny_tokenizer, tmp_path / "model", lambda m, s: logged.append(s),
                              "run-1", "img:1", api=api, echo=said.append)
    finally:
        trainjob.time.sleep = orig
    _validate(api.jobs["shipyard-pretrain-run-1"])
    assert out["nodes"] == 2 and out["train_tokens"] == 6 * 2 * TINY_PRETRAIN["batch_size"] * 128
    assert (tmp_path / "model" / "model.safetensors").exists() and 6 in logged
    assert (tmp_path / "ws" / "shipyard" / "run-1" / "pretrain" / "checkpoints" / "step-000006").is_dir()
    assert "TrainJob default/shipyard-pretrain-run-1 complete" in said


def test_a_failed_trainjob_surfaces_the_reason(tiny_corpus, tmp_path):
    from shipyard.kube import trainjob
    from shipyard.kube.trainjob import run_on_trainjob

    cfg = _cfg(nodes=2, trainjob={"workspace_mount": str(tmp_path / "ws")})
    (tmp_path / "ws").mkdir()
    (tmp_path / "notok").mkdir()
    orig = trainjob.time.sleep
    trainjob.time.sleep = lambda s: orig(0.2)
    try:
        with pytest.raises(RuntimeError, match=r"TrainJob default/shipyard-pretrain-run-2 failed: TrainerFailed"):
            run_on_trainjob(cfg, tiny_corpus, tmp_path / "notok", tmp_path / "m", lambda m, s: None, "run-2",
                            "img:1", api=LocalTrainerController(), echo=lambda s: None)
    finally:
        trainjob.time.sleep = orig
    with pytest.raises(RuntimeError, match="is not mounted in this pod"):
        run_on_trainjob(_cfg(nodes=2, trainjob={"workspace_mount": str(tmp_path / "nowhere")}), tiny_corpus,
                        tmp_path, tmp_path / "m", lambda m, s: None, "run-3", "img:1")

"""manifests/: every kustomize overlay renders (kubectl kustomize) into objects a cluster accepts."""

import pytest
import yaml

from conftest import REPO
from kube_checks import OVERLAY_DIR, kustomize, restricted_violations, unselected_pods, validate, workload_violations

pytestmark = pytest.mark.k8s
OVERLAYS = sorted(p.name for p in OVERLAY_DIR.iterdir())
RUNTIME_POD = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}  # from the InferenceService


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_valid_restricted_covered_objects(overlay):
    assert OVERLAYS == ["cpu-dev", "gpu", "gpu-vllm"]
    objects = kustomize(overlay)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["InferenceService", "NetworkPolicy", "NetworkPolicy", "NetworkPolicy", "NetworkPolicy", "Role",
                     "RoleBinding", "ServiceAccount", "ServingRuntime", "TrainJob"]
    for obj in objects:
        validate(obj)
    bad = [v for o in objects for v in restricted_violations(o, RUNTIME_POD if o["kind"] == "ServingRuntime" else None)]
    bad += [v for o in objects for v in workload_violations(o) if o["kind"] != "TrainJob"]
    bad += [f"{w}: selected by no NetworkPolicy" for w in unselected_pods(objects)]
    assert not bad, "\n".join(bad)
    ns = {"cpu-dev": "shipyard-dev", "gpu": "shipyard", "gpu-vllm": "shipyard"}[overlay]
    assert {o["metadata"].get("namespace") for o in objects} == {ns}
    images = {c["image"] for o in objects if o["kind"] in ("ServingRuntime", "InferenceService")
              for c in (o["spec"].get("containers") or o["spec"].get("predictor", {}).get("containers", []))}
    images.add(next(o for o in objects if o["kind"] == "TrainJob")["spec"]["trainer"]["image"])
    want = "shipyard-cuda" if overlay.startswith("gpu") else "shipyard"
    vllm = {"vllm/vllm-openai:v0.33.0"} if overlay == "gpu-vllm" else set()
    assert images == {f"ghcr.io/shipyard-llmops/{want}:0.1.0"} | vllm, images


def test_gpu_overlay_puts_serving_and_training_on_gpus():
    objects = {o["kind"]: o for o in kustomize("gpu")}
    pred = objects["InferenceService"]["spec"]["predictor"]
    assert pred["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pred["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert objects["ServingRuntime"]["spec"]["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    trainer = objects["TrainJob"]["spec"]["trainer"]
    assert trainer["numProcPerNode"] == 8 and trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"


def test_gpu_vllm_overlay_renders_what_the_charts_vllm_engine_does():
    """The overlay and the chart's gpu-vllm profile give the two containers the same command, args and mounts."""
    from kube_checks import render

    over = next(o for o in kustomize("gpu-vllm") if o["kind"] == "ServingRuntime")["spec"]["containers"]
    chart = next(o for o in render("gpu-vllm-values.yaml") if o["kind"] == "ServingRuntime")["spec"]["containers"]
    assert [c["name"] for c in over] == [c["name"] for c in chart] == ["kserve-container", "vllm"]
    for a, b in zip(over, chart, strict=True):
        assert (a["command"], a["volumeMounts"]) == (b["command"], b["volumeMounts"])
    assert sorted(over[0]["args"]) == sorted(chart[0]["args"])
    assert over[1]["args"] == chart[1]["args"] and over[1]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    isvc = next(o for o in kustomize("gpu-vllm") if o["kind"] == "InferenceService")
    assert "nvidia.com/gpu" not in isvc["spec"]["predictor"]["model"]["resources"]["limits"]  # vLLM holds the GPU


def test_base_objects_are_what_the_code_builds():
    """The base's InferenceService and TrainJob are the builders' output (regenerate them if these fail)."""
    from shipyard.kube.deploy_config import DeployConfig
    from shipyard.kube.inference_service import build_inference_service
    from shipyard.kube.trainjob import build_train_job
    from shipyard.train.pretrain_config import PretrainConfig

    base = REPO / "manifests" / "base"
    isvc = build_inference_service("shipyard-tiny", "s3://shipyard/mlflow/1/models/m-0123456789abcdef/artifacts",
                                   DeployConfig(), rag_index="python_faq@1", image="shipyard",
                                   model_labels={"shipyard.io/model": "shipyard-tiny",
                                                 "shipyard.io/model-version": "1"})
    assert yaml.safe_load((base / "inferenceservice.yaml").read_text()) == isvc
    cfg = PretrainConfig(nodes=2, nproc_per_node=1, trainjob={"workspace_claim": "shipyard-workspace", "cpu": "4",
                                                               "memory": "16Gi"})
    tj = build_train_job("shipyard-pretrain-example", "shipyard", "/workspace/shipyard/example/pretrain/spec.json", cfg)
    assert yaml.safe_load((base / "trainjob.yaml").read_text()) == tj

"""`shipyard compile`: golden IR per pipeline x profile, GPU placement, Secrets, and submit's fail-fast."""

import difflib
import os
from pathlib import Path

import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.k8s
GOLDEN = Path(__file__).parent / "golden"
PIPELINES = sorted(p.stem for p in (REPO / "pipelines").glob("*.py") if p.stem != "__init__")
PROFILES = [None, *sorted(p.stem for p in (REPO / "pipelines" / "configs").glob("*.yaml"))]
UPDATE = os.environ.get("SHIPYARD_UPDATE_GOLDEN") == "1"


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("pipeline", PIPELINES)
def test_compiled_ir_matches_golden(pipeline, profile, tmp_path):
    from shipyard.pipeline_runs import compile_pipeline

    cfg = str(REPO / "pipelines" / "configs" / f"{profile}.yaml") if profile else None
    out = compile_pipeline(str(REPO / "pipelines" / f"{pipeline}.py"), tmp_path / "ir.yaml", cfg).read_text()
    golden = GOLDEN / f"{pipeline}-{profile or 'plain'}.yaml"
    if UPDATE:
        golden.write_text(out)
    assert golden.exists(), f"{golden.name} is missing: SHIPYARD_UPDATE_GOLDEN=1 pytest {__file__} writes it"
    diff = list(difflib.unified_diff(golden.read_text().splitlines(), out.splitlines(), "golden", "compiled",
                                     lineterm="", n=2))
    assert not diff, ("compiled IR differs from " + golden.name + " (review, then SHIPYARD_UPDATE_GOLDEN=1):\n"
                      + "\n".join(diff[:60]))


def test_gpu_profile_places_gpu_stages_and_injects_secrets(tmp_path):
    from shipyard.pipeline_runs import compile_pipeline

    compiled = compile_pipeline(str(REPO / "pipelines" / "lifecycle.py"), tmp_path / "x.yaml",
                                str(REPO / "pipelines" / "configs" / "gpu-small.yaml"))
    ir, platform = yaml.safe_load_all(compiled.read_text())
    assert ir["defaultPipelineRoot"] == "s3://shipyard/pipelines"
    ex = ir["deploymentSpec"]["executors"]
    pre = ex["exec-pretrain"]["container"]
    assert pre["image"].startswith("ghcr.io/shipyard-llmops/shipyard-cuda:")
    assert pre["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert pre["resources"]["accelerator"]["resourceCount"] == "1" and pre["resources"]["resourceMemoryLimit"] == "64Gi"
    assert ex["exec-evaluate"]["container"]["resources"]["resourceMemoryLimit"] == "16Gi"
    cpu = ex["exec-data-filter"]["container"]
    assert cpu["image"].startswith("ghcr.io/shipyard-llmops/shipyard:")
    assert "accelerator" not in cpu.get("resources", {})
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert k8s["exec-pretrain"]["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert k8s["exec-pretrain"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                    "effect": "NoSchedule"}]
    assert "nodeSelector" not in k8s["exec-data-filter"]
    feast = ("exec-rag-index", "exec-evaluate")  # the stages that write and read the RAG index
    for name in ex:  # every task gets the MLflow and S3 credentials from Secrets; Feast's users Feast's too
        envs = {e["envVar"] for s in k8s[name]["secretAsEnv"] for e in s["keyToEnv"]}
        assert envs == {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "AWS_ACCESS_KEY_ID",
                        "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", *(["PGPASSWORD"] if name in feast else [])
                        }, name
    for name in feast:
        assert k8s[name]["configMapAsVolume"][0]["configMapName"] == "shipyard-feast"
        rag_env = {e["name"]: e["value"] for e in ex[name]["container"]["env"]}
        assert rag_env == {"SHIPYARD_FEAST_REPO": "/etc/feast", "SHIPYARD_FEAST_DATA": "s3://shipyard/feast"}
    # placing did not leak into the pipeline object: the plain compile is still CPU everywhere
    plain = yaml.safe_load(compile_pipeline(str(REPO / "pipelines" / "lifecycle.py"), tmp_path / "p.yaml").read_text())
    assert plain["deploymentSpec"]["executors"]["exec-pretrain"]["container"]["image"] == cpu["image"]


def test_placement_errors_name_the_key(tmp_path):
    from shipyard.config import load_pipeline_config
    from shipyard.schema import ConfigError

    text = (REPO / "pipelines" / "configs" / "gpu-small.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("placement: {pretrain: h100,", "placement: {pretrain: a100,"))
    with pytest.raises(ConfigError, match=r"cluster.*placement.pretrain: pool 'a100' is not in pools \(h100, l4\)"):
        load_pipeline_config(bad)
    bad.write_text(text.replace("placement: {pretrain: h100,", "placement: {pretrian: h100,"))
    with pytest.raises(ConfigError, match="placement.pretrian: not a stage"):
        load_pipeline_config(bad)


def test_submit_without_a_reachable_host_fails_fast_naming_the_url():
    import socket
    import time

    from shipyard.pipeline_runs import submit

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        t0 = time.monotonic()
        with pytest.raises(ConnectionError, match=rf"KFP API at http://127.0.0.1:{port}/apis/v2beta1/healthz is "
                                                  "unreachable"):
            submit(str(REPO / "pipelines" / "lifecycle.py"), str(REPO / "pipelines" / "configs" / "ci-tiny.yaml"),
                   f"http://127.0.0.1:{port}", "http://mlflow:5000")
        assert time.monotonic() - t0 < 10
    with pytest.raises(ValueError, match="expected an http"):
        submit("pipelines/lifecycle.py", "pipelines/configs/ci-tiny.yaml", "ml-pipeline:8888", "http://m")


def test_submit_checks_pipeline_params_before_anything_else():
    from shipyard.pipeline_runs import submit

    args = (str(REPO / "pipelines" / "deploy.py"), str(REPO / "pipelines" / "configs" / "gpu-small.yaml"),
            "http://127.0.0.1:9", "http://mlflow:5000")
    with pytest.raises(ValueError, match=r"shipyard-deploy needs --param model_uri=\.\.\."):
        submit(*args)
    with pytest.raises(ValueError, match="--param modl: shipyard-deploy takes model_uri"):
        submit(*args, params={"modl": "x"})
    with pytest.raises(ConnectionError):  # params fine: now the host is tried
        submit(*args, params={"model_uri": "models:/x@champion"})

"""deploy: a registered version -> a valid InferenceService; Ready, or rolled back with the old one serving.

The registry is a real MLflow server on 127.0.0.1 serving artifacts (as the chart's does, there
into S3). The API server is a stand-in that validates every write against KServe's CRD and, like
KServe's storage initializer, looks for the model at the storageUri before it reports Ready.
"""

import copy
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port
from kube_checks import restricted_violations, validate, workload_violations
from shipyard.kube.cluster_config import ClusterConfig

pytestmark = pytest.mark.k8s


class ApiError(Exception):
    pass


class LocalKServe:
    """A namespaced store of InferenceServices with KServe's status semantics."""

    def __init__(self, bucket_root: Path):
        self.objects, self.writes, self.bucket_root = {}, [], bucket_root

    def _exc(self, status):
        from kubernetes.client.exceptions import ApiException

        return ApiException(status=status, reason="NotFound" if status == 404 else "Conflict")

    def _write(self, body, generation):
        validate(body)
        obj = copy.deepcopy(body)
        obj["metadata"].update(generation=generation, resourceVersion=str(len(self.writes) + 1))
        self.objects[obj["metadata"]["name"]] = obj
        self.writes.append(obj)
        return copy.deepcopy(obj)

    def create_namespaced_custom_object(self, group, version, ns, plural, body):
        if body["metadata"]["name"] in self.objects:
            raise self._exc(409)
        return self._write(body, 1)

    def replace_namespaced_custom_object(self, group, version, ns, plural, name, body):
        cur = self.objects[name]
        if body["metadata"].get("resourceVersion") != cur["metadata"]["resourceVersion"]:
            raise self._exc(409)
        return self._write(body, cur["metadata"]["generation"] + 1)

    def delete_namespaced_custom_object(self, group, version, ns, plural, name):
        del self.objects[name]

    def get_namespaced_custom_object(self, group, version, ns, plural, name):
        if name not in self.objects:
            raise self._exc(404)
        obj = copy.deepcopy(self.objects[name])
        uri = obj["spec"]["predictor"]["model"]["storageUri"]
        local = self.bucket_root / uri.removeprefix("s3://shipyard/mlflow/")
        gen = obj["metadata"]["generation"]
        if any(local.rglob("config.json")):  # what the storage initializer would fetch
            obj["status"] = {"observedGeneration": gen, "url": f"http://{name}.{ns}.example.com",
                             "conditions": [{"type": "Ready", "status": "True"}]}
        else:
            obj["status"] = {"observedGeneration": gen, "modelStatus": {
                "transitionStatus": "BlockedByFailedLoad",
                "lastFailureInfo": {"reason": "ModelLoadFailed", "message": f"no model at {uri}"}},
                "conditions": [{"type": "Ready", "status": "False", "reason": "ModelLoadFailed"}]}
        return obj


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                             "--artifacts-destination", str(root / "bucket"), "--serve-artifacts"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env={**os.environ})
    from shipyard.serving.local import stop, wait_ready

    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/health", proc, 120, "mlflow server")
    yield url, root / "bucket"
    stop(proc)


def _cluster(**deploy):
    return ClusterConfig(pools={"l4": {"node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
                                       "tolerations": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]}},
                         deploy={"namespace": "shipyard", "timeout_s": 5, **deploy})


def test_deploy_serves_and_a_failed_version_rolls_back(mlflow_server, tiny_base):
    from shipyard.kube.deploy import deploy
    from shipyard.tracking.register import log_model_version
    from shipyard.tracking.registry import current_alias, pin_rag_index
    from shipyard.tracking.runs import client

    uri, bucket = mlflow_server
    c = client(uri)
    exp = c.create_experiment("deploy-test")
    versions = [log_model_version(uri, c.create_run(exp).info.run_id, tiny_base, "Shipyard_Tiny", 8) for _ in range(2)]
    pin_rag_index(uri, "Shipyard_Tiny", versions[0], "python_faq@3")
    api, said = LocalKServe(bucket), []

    first = deploy("models:/Shipyard_Tiny/1", _cluster(pool="l4"), uri, api=api, log=said.append, poll_s=0.01)
    assert first.url == "http://shipyard-tiny.shipyard.example.com" and first.rag_index == "python_faq@3"
    assert first.storage_uri.startswith("s3://shipyard/mlflow/")
    assert current_alias(uri, "Shipyard_Tiny", "deployed") == "1"
    obj = api.writes[0]
    assert not restricted_violations(obj) and not workload_violations(obj)
    pred = obj["spec"]["predictor"]
    assert pred["model"]["args"] == ["--rag-url=http://127.0.0.1:8081"]
    assert pred["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pred["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pred["containers"][0]["args"][0] == "--index=python_faq@3"
    assert pred["labels"]["app.kubernetes.io/component"] == "inference"

    # version 2's weights never reach the bucket: the storage initializer finds nothing, KServe blocks it
    shutil.rmtree(bucket / first.storage_uri.removeprefix("s3://shipyard/mlflow/").split("/models/")[0] / "models" /
                  Path(c.get_model_version_download_uri("Shipyard_Tiny", "2")).parts[-2])
    with pytest.raises(RuntimeError, match=r"BlockedByFailedLoad: ModelLoadFailed.*alias deployed -> v1; the "
                                           r"previous spec is restored"):
        deploy("models:/Shipyard_Tiny/2", _cluster(), uri, api=api, log=said.append, poll_s=0.01)
    assert current_alias(uri, "Shipyard_Tiny", "deployed") == "1"
    restored = api.objects["shipyard-tiny"]
    assert restored["spec"] == obj["spec"] and restored["metadata"]["generation"] == 3
    assert "storageUri" in restored["spec"]["predictor"]["model"] and "containers" in restored["spec"]["predictor"]


def test_a_first_deploy_that_never_gets_ready_is_removed(mlflow_server, tiny_base):
    from shipyard.kube.deploy import deploy
    from shipyard.tracking.register import log_model_version
    from shipyard.tracking.registry import current_alias
    from shipyard.tracking.runs import client

    uri, _ = mlflow_server
    c = client(uri)
    log_model_version(uri, c.create_run(c.create_experiment("deploy-2")).info.run_id, tiny_base, "lonely", 8)
    api = LocalKServe(Path("/nonexistent"))
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="alias deployed -> no version; the new InferenceService was deleted"):
        deploy("models:/lonely/1", _cluster(canary_traffic_percent=10, mode="Serverless"), uri, api=api,
               log=lambda s: None, poll_s=0.01)
    assert time.monotonic() - t0 < 30 and api.objects == {} and current_alias(uri, "lonely", "deployed") is None
    assert api.writes[0]["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert "containers" not in api.writes[0]["spec"]["predictor"]  # no pinned index: no sidecar, no --rag-url


def test_deploy_rejects_what_a_cluster_cannot_serve(tmp_path):
    from pydantic import ValidationError

    from shipyard.kube.deploy import deploy
    from shipyard.kube.inference_service import isvc_name, storage_uri

    with pytest.raises(ValueError, match="deploy takes a registered model"):
        deploy(str(tmp_path), _cluster(), "sqlite:///x.db", api=object())
    with pytest.raises(ValueError, match="not reachable from a cluster"):
        storage_uri("file:///home/me/mlruns/1/models/m-1/artifacts", "s3://shipyard/mlflow")
    assert storage_uri("mlflow-artifacts:/1/models/m-1/artifacts", "s3://b/mlflow/") == "s3://b/mlflow/1/models/m-1/artifacts"
    assert isvc_name("Shipyard_Tiny") == "shipyard-tiny" and isvc_name("7b") == "m-7b"
    with pytest.raises(ValidationError, match="canary_traffic_percent: KServe splits traffic only in mode Serverless"):
        _cluster(canary_traffic_percent=10)
    with pytest.raises(ValidationError, match="deploy.pool: 'a100' is not in pools"):
        _cluster(pool="a100")

"""The KServe InferenceService for a registered model version, built with the kserve SDK's models.

One predictor pod: ``kserve-container`` from the chart's ``shipyard-llm`` ServingRuntime
(``python -m shipyard.serving /mnt/models``, weights fetched by KServe's storage initializer from
``storageUri``) and, when the version is pinned to a RAG index, the ``rag-sidecar`` container
(``python -m shipyard.serving.rag_sidecar --index NAME@N``), which the runtime calls on
127.0.0.1 (``--rag-url``). Pods run Pod Security "restricted" and carry the labels the chart's
NetworkPolicies select (``app.kubernetes.io/part-of: shipyard``, ``component: inference``).
"""

from __future__ import annotations

import re

from shipyard.kube.cluster_config import POSTGRES_SECRET_ENV, S3_SECRET_ENV, ClusterSecrets, FeastMount

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"


def isvc_name(model_name: str) -> str:
    """A DNS-1035 name from a registered model name (KServe adds suffixes: keep it ≤ 45)."""
    name = re.sub(r"[^a-z0-9-]+", "-", model_name.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"m-{name}"
    return name[:45].rstrip("-")


def storage_uri(download_uri: str, artifacts_destination: str) -> str:
    """The object-store URI KServe's storage initializer can fetch for an MLflow model version.

    MLflow's proxied artifacts (``mlflow-artifacts:/...``) live under the server's
    ``--artifacts-destination``; s3:// and gs:// URIs pass through.
    """
    if download_uri.startswith(("s3://", "gs://")):
        return download_uri
    if download_uri.startswith("mlflow-artifacts:"):
        path = re.sub(r"^mlflow-artifacts:(//[^/]*)?/", "", download_uri)
        return f"{artifacts_destination.rstrip('/')}/{path}"
    raise ValueError(f"model artifacts at {download_uri!r} are not reachable from a cluster: register the model "
                     f"with the cluster's MLflow (artifacts in S3/MinIO), not a local file store")


def _security():
    from kubernetes.client import V1Capabilities, V1SeccompProfile, V1SecurityContext

    return V1SecurityContext(allow_privilege_escalation=False, read_only_root_filesystem=True, run_as_non_root=True,
                             capabilities=V1Capabilities(drop=["ALL"]),
                             seccomp_profile=V1SeccompProfile(type="RuntimeDefault"))


def rag_sidecar(index_ref: str, image: str, port: int, secrets: ClusterSecrets, feast: FeastMount):
    """The sidecar container: one pinned index version, loaded from Feast (the chart's ConfigMap at
    ``feast.mount_path``) before its port opens."""
    from kubernetes.client import (
        V1Container,
        V1ContainerPort,
        V1EnvVar,
        V1EnvVarSource,
        V1HTTPGetAction,
        V1Probe,
        V1ResourceRequirements,
        V1SecretKeySelector,
        V1VolumeMount,
    )

    def from_secret(name: str | None, keys: dict[str, str]) -> list:
        return [V1EnvVar(name=env, value_from=V1EnvVarSource(secret_key_ref=V1SecretKeySelector(name=name, key=key)))
                for key, env in keys.items()] if name else []

    env = [V1EnvVar(name="HOME", value="/tmp"), V1EnvVar(name="HF_HUB_OFFLINE", value="1"),
           *from_secret(secrets.postgres, POSTGRES_SECRET_ENV), *from_secret(secrets.s3, S3_SECRET_ENV)]
    probe = {"period_seconds": 10, "timeout_seconds": 5}
    return V1Container(
        name="rag-sidecar", image=image,
        command=["python", "-m", "shipyard.serving.rag_sidecar"],
        args=[f"--index={index_ref}", f"--repo={feast.mount_path}", "--host=127.0.0.1", f"--port={port}"],
        env=env, ports=[V1ContainerPort(name="rag", container_port=port)],
        readiness_probe=V1Probe(http_get=V1HTTPGetAction(path="/readyz", port=port), **probe),
        liveness_probe=V1Probe(http_get=V1HTTPGetAction(path="/healthz", port=port), initial_delay_seconds=60,
                               **probe),
        resources=V1ResourceRequirements(requests={"cpu": "250m", "memory": "1Gi"},
                                         limits={"cpu": "1", "memory": "2Gi"}),
        security_context=_security(),
        volume_mounts=[V1VolumeMount(name="feast-repo", mount_path=feast.mount_path, read_only=True),
                       V1VolumeMount(name="rag-tmp", mount_path="/tmp")],
    )


def build_inference_service(name: str, storage: str, cfg, pool=None, rag_index: str | None = None,
                            image: str | None = None, namespace: str | None = None,
                            model_labels: dict[str, str] | None = None, secrets: ClusterSecrets | None = None,
                            feast: FeastMount | None = None) -> dict:
    """The InferenceService as a plain dict (camelCase, what the API server receives).

    Args:
        name: metadata.name.
        storage: the model's storageUri (s3://...).
        cfg: the DeployConfig (runtime, resources, replicas, canary).
        pool: the GpuPool serving runs on, or None for CPU.
        rag_index: the pinned ``NAME@N``; None serves without RAG.
        image: the sidecar's image (default: the pinned Shipyard image).
        secrets, feast: the profile's ``cluster.secrets`` and ``cluster.feast`` (default: their defaults).
    """
    from kserve import (
        V1beta1InferenceService,
        V1beta1InferenceServiceSpec,
        V1beta1ModelFormat,
        V1beta1ModelSpec,
        V1beta1PredictorSpec,
    )
    from kubernetes.client import (
        ApiClient,
        V1ConfigMapVolumeSource,
        V1EmptyDirVolumeSource,
        V1ObjectMeta,
        V1PodSecurityContext,
        V1ResourceRequirements,
        V1SeccompProfile,
        V1Toleration,
        V1Volume,
    )

    from shipyard.images import SHIPYARD_IMAGE

    limits = {"cpu": cfg.cpu, "memory": cfg.memory}
    if pool is not None:
        limits = {"cpu": pool.cpu or cfg.cpu, "memory": pool.memory or cfg.memory, pool.accelerator: str(pool.count)}
    args = [f"--rag-url=http://127.0.0.1:{cfg.rag_port}"] if rag_index else []
    model = V1beta1ModelSpec(
        model_format=V1beta1ModelFormat(name="shipyard-llm", version="1"), runtime=cfg.runtime, storage_uri=storage,
        args=args or None, resources=V1ResourceRequirements(requests=dict(limits), limits=dict(limits)),
        security_context=_security())
    labels = {"app.kubernetes.io/part-of": "shipyard", "app.kubernetes.io/component": "inference",
              "app.kubernetes.io/name": name, **(model_labels or {})}
    predictor = V1beta1PredictorSpec(
        model=model, min_replicas=cfg.min_replicas, max_replicas=cfg.max_replicas,
        canary_traffic_percent=cfg.canary_traffic_percent, labels=labels,
        service_account_name=cfg.service_account,
        security_context=V1PodSecurityContext(run_as_non_root=True, run_as_user=10001, run_as_group=10001,
                                              fs_group=10001, seccomp_profile=V1SeccompProfile(type="RuntimeDefault")))
    if pool is not None:
        predictor.node_selector = dict(pool.node_selector) or None
        predictor.tolerations = [V1Toleration(**t.model_dump(exclude_none=True)) for t in pool.tolerations] or None
    if rag_index:
        feast = feast or FeastMount()
        predictor.containers = [rag_sidecar(rag_index, image or SHIPYARD_IMAGE, cfg.rag_port,
                                            secrets or ClusterSecrets(), feast)]
        predictor.volumes = [V1Volume(name="feast-repo", config_map=V1ConfigMapVolumeSource(name=feast.configmap)),
                             V1Volume(name="rag-tmp", empty_dir=V1EmptyDirVolumeSource(size_limit="1Gi"))]
    meta = V1ObjectMeta(name=name, namespace=namespace, labels={"app.kubernetes.io/part-of": "shipyard",
                                                                **(model_labels or {})},
                        annotations={"serving.kserve.io/deploymentMode": cfg.mode})
    isvc = V1beta1InferenceService(api_version=f"{GROUP}/{VERSION}", kind="InferenceService", metadata=meta,
                                   spec=V1beta1InferenceServiceSpec(predictor=predictor))
    return ApiClient().sanitize_for_serialization(isvc)


TERMINAL = ("BlockedByFailedLoad", "InvalidSpec")


def state(obj: dict, generation: int | None = None) -> tuple[str, str]:
    """('ready', url) | ('failed', why) | ('pending', why) for an InferenceService as last read.

    Ready counts only once KServe has observed ``generation`` (the spec just applied): until then a
    Ready condition is the previous revision's. A model that failed to load is terminal.
    """
    status = obj.get("status") or {}
    ms = status.get("modelStatus") or {}
    if ms.get("transitionStatus") in TERMINAL:
        info = ms.get("lastFailureInfo") or {}
        return "failed", f"{ms['transitionStatus']}: {info.get('reason', '')} {info.get('message', '')}".strip()
    if generation is not None and (status.get("observedGeneration") or 0) < generation:
        return "pending", f"KServe has not observed generation {generation} yet"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            if cond.get("status") == "True":
                return "ready", status.get("url") or (status.get("address") or {}).get("url", "")
            return "pending", f"{cond.get('reason', 'NotReady')}: {cond.get('message', '')}".strip(": ")
    return "pending", "no Ready condition yet"

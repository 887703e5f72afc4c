"""The profile's ``cluster:`` section: where a pipeline's pods run on Kubernetes, and how deploy serves.

    cluster:
      pipeline_root: s3://shipyard/pipelines
      secrets: {mlflow: shipyard-mlflow-client, s3: shipyard-s3-client}
      pools:
        h100:
          node_selector: {cloud.google.com/gke-accelerator: nvidia-h100-80gb}
          tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
          accelerator: nvidia.com/gpu
          count: 1
      placement: {pretrain: h100, finetune: h100, align: h100}
      deploy: {namespace: shipyard, pool: h100, min_replicas: 1, max_replicas: 4}

kfp.local ignores all of it; ``shipyard compile -c`` and ``shipyard submit`` apply it to the DAG
(kfp-kubernetes) and ``shipyard deploy`` to the InferenceService. The pools mirror the Helm chart's
``gpuPools`` values (camelCase there, as Kubernetes spells them).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from shipyard.kube.deploy_config import DNS_LABEL, QUANTITY, DeployConfig
from shipyard.schema import StrictModel

# Stages a pool can be given to: the lifecycle's components (KFP task names with '-' as '_').
PLACEABLE = ("data_filter_shard", "data_filter", "train_tokenizer", "pretrain", "finetune", "reward_model",
             "align", "critique_revise", "optimize", "evaluate", "rag_index", "register", "deploy")


class Toleration(StrictModel):
    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class GpuPool(StrictModel):
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    accelerator: str = Field("nvidia.com/gpu", pattern=r"^[a-z0-9.-]+/[a-z0-9.-]+$",
                             description="The extended resource the device plugin advertises.")
    count: int = Field(1, ge=1, le=16, description="Accelerators per pod.")
    cpu: str | None = Field(None, pattern=QUANTITY, description="CPU limit per pod on this pool.")
    memory: str | None = Field(None, pattern=QUANTITY, description="Memory limit per pod on this pool.")


# The keys of each Secret and the env variables they become, wherever Shipyard code runs on a cluster.
MLFLOW_SECRET_ENV = {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}
S3_SECRET_ENV = {"access-key": "AWS_ACCESS_KEY_ID", "secret-key": "AWS_SECRET_ACCESS_KEY",
                 "endpoint": "AWS_ENDPOINT_URL"}
POSTGRES_SECRET_ENV = {"password": "PGPASSWORD"}


class ClusterSecrets(StrictModel):
    """Secrets in the pipeline namespace, injected as env with kfp.kubernetes.use_secret_as_env."""

    mlflow: str | None = Field("shipyard-mlflow-client", pattern=DNS_LABEL,
                               description="keys username, password -> MLFLOW_TRACKING_USERNAME/PASSWORD")
    s3: str | None = Field("shipyard-s3-client", pattern=DNS_LABEL,
                           description="keys access-key, secret-key, endpoint -> AWS_ACCESS_KEY_ID, "
                                       "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL")
    postgres: str | None = Field("shipyard-postgres", pattern=DNS_LABEL,
                                 description="key password -> PGPASSWORD, for Feast (rag_index, the RAG sidecar)")


class FeastMount(StrictModel):
    """The Helm chart's Feast config (``feast.shareConfig``), mounted where RAG code runs."""

    configmap: str = Field("shipyard-feast", pattern=DNS_LABEL, description="Holds feature_store.yaml and data_uri.")
    data_uri: str = Field("s3://shipyard/feast", pattern=r"^(s3|gs)://",
                          description="SHIPYARD_FEAST_DATA: where index versions' rows go, read by every sidecar.")
    mount_path: str = Field("/etc/feast", pattern=r"^/")


class ClusterConfig(StrictModel):
    pipeline_root: str | None = Field(None, pattern=r"^(s3|gs|minio)://[a-z0-9][a-z0-9.-]+(/.*)?$",
                                      description="Where KFP keeps artifacts (MinIO/S3 on the chart).")
    secrets: ClusterSecrets = ClusterSecrets()
    pools: dict[str, GpuPool] = Field(default_factory=dict)
    placement: dict[str, str] = Field(default_factory=dict, description="stage -> pool name")
    service_account: str | None = Field(None, pattern=DNS_LABEL,
                                        description="Pipeline runs' ServiceAccount (the chart's pipeline runner).")
    feast: FeastMount = FeastMount()
    deploy: DeployConfig = DeployConfig()

    @model_validator(mode="after")
    def _pools_exist(self) -> ClusterConfig:
        for stage, pool in self.placement.items():
            if stage not in PLACEABLE:
                raise ValueError(f"placement.{stage}: not a stage ({', '.join(PLACEABLE)})")
            if pool not in self.pools:
                raise ValueError(f"placement.{stage}: pool {pool!r} is not in pools "
                                 f"({', '.join(self.pools) or 'none'})")
        if self.deploy.pool is not None and self.deploy.pool not in self.pools:
            raise ValueError(f"deploy.pool: {self.deploy.pool!r} is not in pools ({', '.join(self.pools) or 'none'})")
        return self

    def pool_for(self, stage: str) -> GpuPool | None:
        name = self.placement.get(stage)
        return self.pools[name] if name else None

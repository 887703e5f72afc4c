"""The deploy stage's config (``cluster.deploy``, ``shipyard.kube.deploy``): the InferenceService of a model version."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from shipyard.schema import StrictModel

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$"


class DeployConfig(StrictModel):
    """The InferenceService ``shipyard deploy`` builds for a registered model version."""

    name: str | None = Field(None, pattern=DNS_LABEL, max_length=45,
                             description="InferenceService name (default: the registered model's name).")
    namespace: str | None = Field(None, pattern=DNS_LABEL, description="Default: the current namespace.")
    runtime: str = Field("shipyard-llm", pattern=DNS_LABEL, description="The Helm chart's ServingRuntime.")
    pool: str | None = Field(None, description="A cluster.pools name; CPU serving when unset.")
    cpu: str = Field("2", pattern=QUANTITY)
    memory: str = Field("8Gi", pattern=QUANTITY)
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    mode: Literal["RawDeployment", "Serverless"] = Field(
        "RawDeployment", description="KServe deployment mode: plain Deployments, or Knative (scale to zero, canary).")
    canary_traffic_percent: int | None = Field(None, ge=0, le=100,
                                               description="Traffic to the new revision; the rest stays on the last "
                                                           "(Serverless mode).")
    alias: str = Field("deployed", pattern=r"^[a-z][a-z0-9_-]*$",
                       description="Registry alias that follows what serves; rolled back when not Ready.")
    artifacts_destination: str = Field("s3://shipyard/mlflow", pattern=r"^(s3|gs)://",
                                       description="Where the MLflow server stores artifacts (the chart's).")
    rag_port: int = Field(8081, ge=1024, le=65535)
    service_account: str | None = Field(None, pattern=DNS_LABEL, description=(
        "The predictor pods' ServiceAccount: the one carrying KServe's S3 credentials (a Secret with "
        "serving.kserve.io/s3-endpoint annotations) for the storage initializer."))
    timeout_s: int = Field(900, gt=0, description="How long to wait for Ready before rolling back.")

    @model_validator(mode="after")
    def _replicas(self) -> DeployConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})")
        if self.canary_traffic_percent is not None and self.mode != "Serverless":
            raise ValueError("canary_traffic_percent: KServe splits traffic only in mode Serverless")
        return self

"""KFP component: a registered model version -> a KServe InferenceService (``shipyard.kube.deploy``);
the registry alias and the previous spec are rolled back if it never becomes Ready."""

from kfp import dsl
from kfp.dsl import Artifact, Metrics, Output

from shipyard.components.images import SHIPYARD_IMAGE


@dsl.component(base_image=SHIPYARD_IMAGE)
def deploy(config: str, tracking_uri: str, parent_run_id: str, model_uri: str, deployment: Output[Artifact],
           metrics: Output[Metrics]):
    from shipyard.stages import run_stage

    run_stage("deploy", config, tracking_uri, parent_run_id, inputs={}, outputs={"deployment": deployment.path},
              kfp_metrics=metrics, params={"model_uri": model_uri})

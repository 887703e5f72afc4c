"""Serve a registered model version on KServe: one step, on the cluster, as the pipeline runner.

    shipyard submit pipelines/deploy.py -c pipelines/configs/gpu-small.yaml --host URL --tracking-uri URL \\
        --param model_uri=models:/shipyard-tiny@champion

The profile's ``cluster.deploy`` (and pool) shape the InferenceService; the run needs the chart's
pipeline-runner ServiceAccount (``cluster.service_account``) to create it. Locally, ``shipyard deploy``
calls the same function with your kubeconfig.
"""

from kfp import dsl

from shipyard.components.deploy.component import deploy


@dsl.pipeline(name="shipyard-deploy", description="A registered model version to a Ready InferenceService, "
                                                  "or rolled back.")
def deploy_pipeline(config: str, tracking_uri: str, parent_run_id: str, model_uri: str):
    deploy(config=config, tracking_uri=tracking_uri, parent_run_id=parent_run_id, model_uri=model_uri)

"""KFP component: documents -> a new RAG index version in Feast (``shipyard.features.rag_index``)."""

from kfp import dsl
from kfp.dsl import Artifact, Metrics, Output

from shipyard.components.images import SHIPYARD_IMAGE


@dsl.component(base_image=SHIPYARD_IMAGE)
def rag_index(config: str, tracking_uri: str, parent_run_id: str, index: Output[Artifact], metrics: Output[Metrics]):
    from shipyard.stages import run_stage

    run_stage("rag_index", config, tracking_uri, parent_run_id, inputs={}, outputs={"index": index.path},
              kfp_metrics=metrics)

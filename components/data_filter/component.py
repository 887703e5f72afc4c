"""KFP component: raw shards -> clean corpus + quarantine (``shipyard.data.filter``)."""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from shipyard.components.images import SHIPYARD_IMAGE


@dsl.component(base_image=SHIPYARD_IMAGE)
def data_filter(config: str, tracking_uri: str, parent_run_id: str,
                clean: Output[Dataset], quarantine: Output[Dataset], metrics: Output[Metrics]):
    from shipyard.stages import run_stage

    run_stage("data_filter", config, tracking_uri, parent_run_id, inputs={},
              outputs={"clean": clean.path, "quarantine": quarantine.path}, kfp_metrics=metrics)

"""KFP component: aligned model -> dynamic-int8 model (``shipyard.optimize.quantize``)."""

from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output

from shipyard.components.images import SHIPYARD_IMAGE


@dsl.component(base_image=SHIPYARD_IMAGE)
def quantize(config: str, tracking_uri: str, parent_run_id: str, source: Input[Model],
             model: Output[Model], metrics: Output[Metrics]):
    from shipyard.stages import run_stage

    run_stage("quantize", config, tracking_uri, parent_run_id, inputs={"model": source.path},
              outputs={"model": model.path}, kfp_metrics=metrics)

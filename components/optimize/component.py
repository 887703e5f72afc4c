"""KFP component: aligned model -> deployable model, distilled/pruned/quantized (``shipyard.optimize.optimize``)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from shipyard.components.images import SHIPYARD_IMAGE


@dsl.component(base_image=SHIPYARD_IMAGE)
def optimize(config: str, tracking_uri: str, parent_run_id: str, source: Input[Model], corpus: Input[Dataset],
             model: Output[Model], metrics: Output[Metrics]):
    from shipyard.stages import run_stage

    run_stage("optimize", config, tracking_uri, parent_run_id, inputs={"model": source.path, "corpus": corpus.path},
              outputs={"model": model.path}, kfp_metrics=metrics)

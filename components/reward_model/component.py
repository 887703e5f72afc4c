"""KFP component: base model + preference pairs -> reward model (``shipyard.train.reward_model``)."""

from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output

from shipyard.components.images import SHIPYARD_IMAGE


@dsl.component(base_image=SHIPYARD_IMAGE)
def reward_model(config: str, tracking_uri: str, parent_run_id: str, base_model: Input[Model],
                 model: Output[Model], metrics: Output[Metrics]):
    from shipyard.stages import run_stage

    run_stage("reward_model", config, tracking_uri, parent_run_id, inputs={"base_model": base_model.path},
              outputs={"model": model.path}, kfp_metrics=metrics)

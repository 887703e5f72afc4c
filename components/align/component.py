"""KFP component: instruct model + reward model -> PPO/DPO/GRPO-aligned model (``shipyard.train.align``)."""

from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output

from shipyard.components.images import SHIPYARD_IMAGE


@dsl.component(base_image=SHIPYARD_IMAGE)
def align(config: str, tracking_uri: str, parent_run_id: str, policy: Input[Model],
          reward_model: Input[Model], model: Output[Model], metrics: Output[Metrics]):
    from shipyard.stages import run_stage

    run_stage("align", config, tracking_uri, parent_run_id,
              inputs={"model": policy.path, "reward_model": reward_model.path},
              outputs={"model": model.path}, kfp_metrics=metrics)

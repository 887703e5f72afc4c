"""KFP component: instruct model -> critique-revise data (``shipyard.train.critique_revise``).

Its ``data`` output holds sft.jsonl (for finetune) and preferences.jsonl (for reward_model / dpo).
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from shipyard.components.images import SHIPYARD_IMAGE


@dsl.component(base_image=SHIPYARD_IMAGE)
def critique_revise(config: str, tracking_uri: str, parent_run_id: str, model: Input[Model],
                    data: Output[Dataset], metrics: Output[Metrics]):
    from shipyard.stages import run_stage

    run_stage("critique_revise", config, tracking_uri, parent_run_id, inputs={"model": model.path},
              outputs={"data": data.path}, kfp_metrics=metrics)

"""KFP component: corpus + tokenizer -> base causal LM (``shipyard.train.pretrain``)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from shipyard.components.images import SHIPYARD_IMAGE


@dsl.component(base_image=SHIPYARD_IMAGE)
def pretrain(config: str, tracking_uri: str, parent_run_id: str, corpus: Input[Dataset],
             tokenizer: Input[Artifact], model: Output[Model], metrics: Output[Metrics]):
    from shipyard.stages import run_stage

    run_stage("pretrain", config, tracking_uri, parent_run_id,
              inputs={"corpus": corpus.path, "tokenizer": tokenizer.path},
              outputs={"model": model.path}, kfp_metrics=metrics)

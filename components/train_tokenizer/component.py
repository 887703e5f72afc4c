"""KFP component: clean corpus -> byte-level BPE tokenizer (``shipyard.data.train_tokenizer``)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from shipyard.components.images import SHIPYARD_IMAGE


@dsl.component(base_image=SHIPYARD_IMAGE)
def train_tokenizer(config: str, tracking_uri: str, parent_run_id: str, corpus: Input[Dataset],
                    tokenizer: Output[Artifact], metrics: Output[Metrics]):
    from shipyard.stages import run_stage

    run_stage("train_tokenizer", config, tracking_uri, parent_run_id, inputs={"corpus": corpus.path},
              outputs={"tokenizer": tokenizer.path}, kfp_metrics=metrics)

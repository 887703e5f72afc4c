"""KFP component: every model of the run -> one eval table (``shipyard.eval.evaluate``)."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from shipyard.components.images import SHIPYARD_IMAGE


@dsl.component(base_image=SHIPYARD_IMAGE)
def evaluate(config: str, tracking_uri: str, parent_run_id: str, base_model: Input[Model],
             finetuned_model: Input[Model], aligned_model: Input[Model], optimized_model: Input[Model],
             reward_model: Input[Model], rag_index: Input[Artifact], report: Output[Artifact],
             metrics: Output[Metrics]):
    from shipyard.stages import run_stage

    run_stage("evaluate", config, tracking_uri, parent_run_id,
              inputs={"base_model": base_model.path, "finetuned_model": finetuned_model.path,
                      "aligned_model": aligned_model.path, "optimized_model": optimized_model.path,
                      "reward_model": reward_model.path, "rag_index": rag_index.path},
              outputs={"report": report.path}, kfp_metrics=metrics)

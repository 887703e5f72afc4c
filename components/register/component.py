"""KFP component: gate + register in MLflow, aliases candidate/champion (``shipyard.tracking.registry``);
the version is pinned to the run's RAG index version, if it made one."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from shipyard.components.images import SHIPYARD_IMAGE


@dsl.component(base_image=SHIPYARD_IMAGE)
def register(config: str, tracking_uri: str, parent_run_id: str, optimized_model: Input[Model],
             aligned_model: Input[Model], eval_report: Input[Artifact], rag_index: Input[Artifact],
             decision: Output[Artifact], metrics: Output[Metrics]):
    from shipyard.stages import run_stage

    run_stage("register", config, tracking_uri, parent_run_id,
              inputs={"optimized_model": optimized_model.path, "aligned_model": aligned_model.path,
                      "eval_report": eval_report.path, "rag_index": rag_index.path},
              outputs={"decision": decision.path}, kfp_metrics=metrics)

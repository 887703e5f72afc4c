"""KFP components of data curation (``shipyard.data.data_filter``).

``data_filter_shard`` runs the filter phase for one pod's share of the input shards (the
pipeline fans it out with ``dsl.ParallelFor``); ``data_filter`` collects the parts, runs
exact + MinHash dedup across all of them and writes the corpus, quarantine and drop table.
"""

from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from shipyard.components.images import SHIPYARD_IMAGE


@dsl.component(base_image=SHIPYARD_IMAGE)
def data_filter_shard(config: str, tracking_uri: str, parent_run_id: str, shard: int,
                      part: Output[Dataset], metrics: Output[Metrics]):
    from shipyard.stages import run_stage

    run_stage("data_filter_shard", config, tracking_uri, parent_run_id, inputs={},
              outputs={"part": part.path}, kfp_metrics=metrics, params={"shard": shard},
              task_name=f"data_filter_shard-{shard}")


@dsl.component(base_image=SHIPYARD_IMAGE)
def data_filter(config: str, tracking_uri: str, parent_run_id: str, parts: Input[List[Dataset]],
                clean: Output[Dataset], quarantine: Output[Dataset], metrics: Output[Metrics]):
    from shipyard.stages import run_stage

    run_stage("data_filter", config, tracking_uri, parent_run_id,
              inputs={f"part{i:04d}": p.path for i, p in enumerate(parts)},
              outputs={"clean": clean.path, "quarantine": quarantine.path}, kfp_metrics=metrics)

"""The whole lifecycle as one KFP v2 pipeline: filter -> tokenize -> pretrain -> finetune -> reward model
-> align (PPO | DPO | GRPO) -> optimize (distill | prune | quantize) -> evaluate -> register (gated champion);
beside them, rag_index (documents -> a Feast index version, pinned to the registered model version).

    shipyard run pipelines/lifecycle.py -c pipelines/configs/tiny-cpu.yaml        # kfp.local, CPU
    shipyard compile pipelines/lifecycle.py -o lifecycle.yaml                     # KFP IR YAML
    shipyard submit pipelines/lifecycle.py -c pipelines/configs/tiny-cpu.yaml --host URL

The profile travels as one JSON parameter, validated again inside every component, so one
compiled pipeline serves every profile. Models and datasets pass between steps as KFP artifacts.
The data filter fans out over ``data_shards`` pods (``dsl.ParallelFor``); a merge step dedups.
"""

from kfp import dsl

from shipyard.components.align.component import align
from shipyard.components.data_filter.component import data_filter, data_filter_shard
from shipyard.components.evaluate.component import evaluate
from shipyard.components.finetune.component import finetune
from shipyard.components.optimize.component import optimize
from shipyard.components.pretrain.component import pretrain
from shipyard.components.rag_index.component import rag_index
from shipyard.components.register.component import register
from shipyard.components.reward_model.component import reward_model
from shipyard.components.train_tokenizer.component import train_tokenizer


@dsl.pipeline(name="shipyard-lifecycle", description="Data to gated, registered, servable model.")
def lifecycle(config: str, tracking_uri: str, parent_run_id: str, data_shards: list = [0]):  # noqa: B006
    run = dict(config=config, tracking_uri=tracking_uri, parent_run_id=parent_run_id)
    with dsl.ParallelFor(data_shards) as shard:  # data_shards = range(data_filter.fan_out), set by the CLI
        part = data_filter_shard(shard=shard, **run)
    clean = data_filter(parts=dsl.Collected(part.outputs["part"]), **run)
    tok = train_tokenizer(corpus=clean.outputs["clean"], **run)
    base = pretrain(corpus=clean.outputs["clean"], tokenizer=tok.outputs["tokenizer"], **run)
    sft = finetune(base_model=base.outputs["model"], **run)
    rm = reward_model(base_model=base.outputs["model"], **run)
    aligned = align(policy=sft.outputs["model"], reward_model=rm.outputs["model"], **run)
    opt = optimize(source=aligned.outputs["model"], corpus=clean.outputs["clean"], **run)
    docs = rag_index(**run)
    ev = evaluate(base_model=base.outputs["model"], finetuned_model=sft.outputs["model"],
                  aligned_model=aligned.outputs["model"], optimized_model=opt.outputs["model"],
                  reward_model=rm.outputs["model"], rag_index=docs.outputs["index"], **run)
    register(optimized_model=opt.outputs["model"], aligned_model=aligned.outputs["model"],
             eval_report=ev.outputs["report"], rag_index=docs.outputs["index"], **run)

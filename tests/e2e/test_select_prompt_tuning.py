"""The lifecycle on kfp.local choosing by config: select a base (no pretraining) and prompt-tune it.

The soft prompt is never merged: it rides through DPO, int8 quantization, the registry and the
KServe server, which answers a chat request with it attached.
"""

import pytest
import yaml

from conftest import REPO, free_port

pytestmark = pytest.mark.e2e


def test_select_then_prompt_tuning_through_serving(tiny_base, monkeypatch, tmp_path):
    from shipyard.paths import default_tracking_uri
    from shipyard.pipeline_runs import run_local
    from shipyard.serving.local import chat_once, start_server, stop_server, wait_ready
    from shipyard.tracking.runs import client

    monkeypatch.chdir(REPO)
    profile = yaml.safe_load((REPO / "pipelines/configs/ci-tiny.yaml").read_text())
    profile.update(name="ci-select", base={"type": "local", "path": str(tiny_base)})
    profile["data_filter"]["max_docs"] = 200
    profile["finetune"].update(method="prompt_tuning", prompt_tuning={"num_virtual_tokens": 20}, lr=0.5,
                               max_length=128, max_steps=6, eval_examples=16)
    profile["finetune"].pop("lora")
    profile["reward_model"].update(max_length=96, max_steps=4)
    profile["align"] = {"method": "dpo", "train": profile["align"]["train"], "max_length": 96, "max_steps": 3,
                        "batch_size": 8, "lr": 0.0005, "eval_examples": 4, "generation": {"max_new_tokens": 8},
                        # judged by vaderSentiment: a 4-step reward model is at chance, and align would refuse it
                        "judge": [{"kind": "sentiment"}]}
    profile["evaluate"].update(context_length=128, max_examples=4, max_new_tokens=8)
    profile["register"]["model_name"] = "shipyard-select"
    profile.pop("rag")  # RAG is the lifecycle test's, and so are its eval suite and gate
    profile["evaluate"]["suites"] = [s for s in profile["evaluate"]["suites"]  # and what searches the index
                                     if s["kind"] != "rag" and "search" not in s.get("tools", [])]
    profile["register"]["gate"] = [g for g in profile["register"]["gate"] if ".rag." not in g["metric"]]
    path = tmp_path / "ci-select.yaml"
    path.write_text(yaml.safe_dump(profile))
    uri = default_tracking_uri()
    summary = run_local("shipyard.pipelines.lifecycle", str(path), uri)
    assert summary.gate == "passed"
    port = free_port()
    proc = start_server("models:/shipyard-select@champion", port, uri, 8)
    try:  # a question short enough for the 128-token base with its 20 virtual tokens
        wait_ready(f"http://127.0.0.1:{port}/v1/models/shipyard-select", proc)
        assert isinstance(chat_once(port, "shipyard-select", "Summarize: a tiny netmask tool.", 8)[0], str)
    finally:
        stop_server(proc)
    c = client(uri)
    runs = c.search_runs([c.get_run(summary.parent_run_id).info.experiment_id],
                         filter_string=f"tags.mlflow.parentRunId = '{summary.parent_run_id}'")
    by_stage = {r.data.tags["shipyard.stage"]: r for r in runs}
    assert by_stage["pretrain"].data.tags["shipyard.base"] == "local"
    assert by_stage["pretrain"].data.metrics["selected"] == 1
    ft = by_stage["finetune"].data.metrics
    assert ft["trainable_params"] == 20 * 32 and ft["quarantined"] > 0  # rows too long for 128 tokens
    kfp_root = next(p for p in tmp_path.rglob("shipyard_adapter.json") if "/optimize/" in str(p)).parent
    assert (kfp_root / "adapters/default/adapter_model.safetensors").exists()

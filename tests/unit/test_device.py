"""Where inference runs (shipyard.models.device): the rules, and the stages that follow them on CPU.

The GPU side of the same stages is in tests/gpu/test_cuda_paths.py (skipped without CUDA). Here,
``cuda_available`` is patched to say yes where a rule depends on it: the rules read only the
model directory's quantization file, so no GPU is needed to check them.
"""

from __future__ import annotations

import json

import pytest

from conftest import DEMO


def _quantized_dir(tmp_path, method):
    d = tmp_path / method
    d.mkdir()
    (d / "shipyard_quant.json").write_text(json.dumps({"method": method}))
    return d


@pytest.fixture
def gpu_visible(monkeypatch):
    import shipyard.models.device as device

    monkeypatch.setattr(device, "cuda_available", lambda: True)


def test_auto_is_the_gpu_for_float_models_and_the_kernels_home_for_quantized_ones(tmp_path, gpu_visible):
    from shipyard.models.device import inference_device

    assert inference_device("auto", tmp_path) == "cuda"
    assert inference_device("cpu", tmp_path) == "cpu"
    assert inference_device("auto", _quantized_dir(tmp_path, "bnb_nf4")) == "cuda"
    for method in ("dynamic_int8", "int8_weight_only", "int4_weight_only"):
        assert inference_device("auto", _quantized_dir(tmp_path, method)) == "cpu"


def test_a_device_the_model_or_machine_cannot_run_on_is_refused_by_name(tmp_path, monkeypatch):
    import shipyard.models.device as device
    from shipyard.models.device import inference_device

    monkeypatch.setattr(device, "cuda_available", lambda: False)
    assert inference_device("auto", tmp_path) == "cpu"
    with pytest.raises(ValueError, match="device cuda: no CUDA GPU is visible"):
        inference_device("cuda", tmp_path)
    with pytest.raises(ValueError, match="device 'tpu': expected one of auto, cpu, cuda"):
        inference_device("tpu", tmp_path)
    bnb = _quantized_dir(tmp_path, "bnb_int8")
    with pytest.raises(ValueError, match=r"bnb_int8: a bnb_int8 \(bitsandbytes\) model runs on a CUDA GPU only, "
                                         "and none is visible"):
        inference_device("auto", bnb)
    monkeypatch.setattr(device, "cuda_available", lambda: True)
    with pytest.raises(ValueError, match="runs on a CUDA GPU only$"):
        inference_device("cpu", bnb)
    with pytest.raises(ValueError,
                       match="dynamic_int8: a dynamic_int8 model runs on the CPU only.*bnb_int8 or bnb_nf4"):
        inference_device("cuda", _quantized_dir(tmp_path, "dynamic_int8"))


def test_dtype_auto_is_float32_on_the_cpu_and_half_precision_there_is_refused():
    import torch

    from shipyard.models.device import inference_dtype

    assert inference_dtype("auto", "cpu") is torch.float32
    assert inference_dtype("float32", "cpu") is torch.float32
    with pytest.raises(ValueError, match="dtype bfloat16: half precision is for a GPU"):
        inference_dtype("bfloat16", "cpu")
    with pytest.raises(ValueError, match="dtype 'fp8': expected one of"):
        inference_dtype("fp8", "cpu")


def test_the_server_says_where_it_runs_and_refuses_a_gpu_it_does_not_have(tiny_base):
    import torch

    from shipyard.serving.llm import SamplingParams, ShipyardLLM

    llm = ShipyardLLM("tiny", tiny_base, 4)
    llm.load()
    expected = ("cuda", "bfloat16") if torch.cuda.is_available() else ("cpu", "float32")
    assert (llm.device, llm.dtype_name) == expected
    assert next(llm.model.parameters()).device.type == llm.device
    assert llm.generate("The", SamplingParams(4)).completion_tokens > 0
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device cuda: no CUDA GPU is visible"):
            ShipyardLLM("tiny", tiny_base, 4, device="cuda").load()


def test_evaluate_records_each_models_device_and_checks_them_before_any_work(tiny_base, tmp_path):
    import torch

    from shipyard.eval.evaluate import run_evaluate
    from shipyard.eval.evaluate_config import EvalSpec

    heldout = {"name": "heldout", "kind": "perplexity", "data": str(DEMO / "heldout/python-docs.jsonl"),
               "max_examples": 2}
    spec = EvalSpec(suites=[heldout], context_length=64)
    run_evaluate(spec, {"base": tiny_base}, tmp_path / "eval")
    where = "cuda" if torch.cuda.is_available() else "cpu"
    assert json.loads((tmp_path / "eval" / "timings.json").read_text())["device"] == {"base": where}
    assert f"Devices: base on {where}" in (tmp_path / "eval" / "eval.md").read_text()
    if not torch.cuda.is_available():
        cuda = EvalSpec(suites=[heldout], context_length=64, device="cuda")
        with pytest.raises(ValueError, match="device cuda: no CUDA GPU is visible"):
            run_evaluate(cuda, {"base": tiny_base}, tmp_path / "eval-cuda")
        assert not (tmp_path / "eval-cuda" / "samples.jsonl").exists()


def test_optimize_measures_every_step_where_the_final_model_runs(tmp_path, gpu_visible):
    from shipyard.optimize.optimize import measure_device
    from shipyard.optimize.optimize_config import OptimizeConfig, PruneConfig, QuantizeConfig

    assert measure_device(OptimizeConfig(quantize=QuantizeConfig(method="dynamic_int8"))) == "cpu"
    assert measure_device(OptimizeConfig(quantize=QuantizeConfig(method="bnb_nf4"))) == "cuda"
    assert measure_device(OptimizeConfig(quantize=None, prune=PruneConfig(sparsity=0.5))) == "cuda"
    assert measure_device(OptimizeConfig(quantize=None, prune=PruneConfig(sparsity=0.5), device="cpu")) == "cpu"
    with pytest.raises(ValueError,
                       match=r"optimize.device cuda: the final model \(int4_weight_only\) runs on cpu only"):
        measure_device(OptimizeConfig(quantize=QuantizeConfig(method="int4_weight_only"), device="cuda"))


def test_optimize_without_a_gpu_refuses_bitsandbytes_before_measuring_anything(tiny_base, tmp_path, monkeypatch):
    import shipyard.models.device as device
    from shipyard.optimize.optimize import run_optimize
    from shipyard.optimize.optimize_config import OptimizeConfig, QuantizeConfig

    monkeypatch.setattr(device, "cuda_available", lambda: False)
    with pytest.raises(ValueError, match="bnb_int8: bitsandbytes kernels need a CUDA GPU.*dynamic_int8"):
        run_optimize(OptimizeConfig(quantize=QuantizeConfig(method="bnb_int8")), tiny_base, tmp_path / "out",
                     heldout=DEMO / "heldout/python-docs.jsonl")
    assert not (tmp_path / "out").exists()


def test_the_alignment_judgement_of_a_model_against_itself_is_a_tie_with_zero_kl(tiny_base, tmp_path):
    import shutil

    from shipyard.train.align import evaluate_alignment
    from shipyard.train.align_config import AlignConfig
    from shipyard.train.rl_rewards import RewardTerm, build_reward

    copy = shutil.copytree(tiny_base, tmp_path / "same")  # the judgement writes its samples beside the model
    cfg = AlignConfig(method="ppo", train=str(DEMO / "preferences/train.jsonl"), max_length=64,
                      generation={"max_new_tokens": 8}, rewards=[RewardTerm(kind="keywords", keywords=["the"])])
    m, _ = evaluate_alignment(cfg, copy, copy, ["The Python", "A list is"] * 4, build_reward(cfg.rewards, None, 64))
    assert m["win_rate"] == 0.5 and abs(m["kl_to_instruct"]) < 1e-4
    assert (copy / "alignment_samples.jsonl").exists()

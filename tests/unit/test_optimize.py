"""The optimize stage: torchao weight-only quantization, pruning with recovery, distillation, the report."""

import json

import pytest
import torch

from conftest import DEMO, TINY_PRETRAIN
from shipyard.optimize.optimize_config import DistillConfig, OptimizeConfig, PruneConfig, QuantizeConfig


@pytest.fixture(scope="module")
def deep_base(tiny_corpus, tiny_tokenizer, tmp_path_factory):
    """A 4-block teacher (tiny_base has one block, nothing to distill from)."""
    from shipyard.train.pretrain import run_pretrain
    from shipyard.train.pretrain_config import PretrainConfig

    out = tmp_path_factory.mktemp("deep")
    run_pretrain(PretrainConfig(**{**TINY_PRETRAIN, "num_layers": 4}), tiny_corpus, tiny_tokenizer, out)
    return out


def _float(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path)).eval()


@pytest.mark.parametrize("method", ["int8_weight_only", "int4_weight_only"])
def test_weight_only_quantization_saves_small_and_serves_exactly(tiny_base, tmp_path, method):
    from shipyard.models.causal_lm import load_causal_lm, load_tokenizer
    from shipyard.models.inference import generate
    from shipyard.optimize.quantize import linear_names, run_quantize
    from shipyard.optimize.weight_only import quantize_weight_only

    out = run_quantize(QuantizeConfig(method=method, group_size=32), tiny_base, tmp_path)
    spec = json.loads((tmp_path / "shipyard_quant.json").read_text())
    assert spec["method"] == method and out["quantized_layers"] == 7 and spec["float_modules"] == []
    served = load_causal_lm(tmp_path)
    ref = _float(tiny_base)
    quantize_weight_only(ref, linear_names(ref, ["lm_head"]), method, 32)
    ids = torch.randint(0, 600, (2, 16))
    with torch.no_grad():
        assert torch.equal(served(ids).logits, ref(ids).logits)  # the exact quantized values came back
        drift = (served(ids).logits - _float(tiny_base)(ids).logits).abs().max().item()
    assert drift < (0.1 if method == "int8_weight_only" else 1.0)
    linear_bytes = {k: v for k, v in out.items()}
    assert linear_bytes["size_bytes_after"] < linear_bytes["size_bytes_before"]
    assert isinstance(generate(served, load_tokenizer(tmp_path), ["The Python"], 4)[0], str)


def test_int4_is_packed_two_per_byte(tiny_base, tmp_path):
    from safetensors import safe_open

    from shipyard.optimize.quantize import run_quantize

    run_quantize(QuantizeConfig(method="int4_weight_only", group_size=32), tiny_base, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        q = f.get_tensor("model.layers.0.mlp.down_proj._weight_qdata")
    assert q.dtype == torch.uint8 and q.numel() == 32 * 64 // 2
    # a group size that divides no layer is refused; one that divides some keeps the rest in float
    with pytest.raises(ValueError, match="divides no layer"):
        run_quantize(QuantizeConfig(method="int4_weight_only", group_size=48), tiny_base, tmp_path / "x")


def test_bitsandbytes_without_cuda_is_a_clear_error(tiny_base, tmp_path):
    from shipyard.optimize.quantize import run_quantize

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="bnb_nf4: bitsandbytes kernels need a CUDA GPU.*int4_weight_only"):
        run_quantize(QuantizeConfig(method="bnb_nf4"), tiny_base, tmp_path)


def test_unstructured_pruning_hits_the_target_and_recovery_keeps_the_zeros(tiny_base, tiny_corpus):
    from shipyard.models.causal_lm import load_tokenizer
    from shipyard.optimize.prune import run_prune, sparsity_of

    model = _float(tiny_base)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = run_prune(PruneConfig(sparsity=0.5, recover_steps=15, lr=3e-3, seq_len=64), model, tiny_corpus,
                    load_tokenizer(tiny_base))
    assert out["prune.weight_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert out["prune.weight_sparsity_after_recovery"] == pytest.approx(0.5, abs=0.01)
    assert out["prune.heldout_loss_recovered"] < out["prune.heldout_loss_pruned"]
    assert sparsity_of(model, ["lm_head"]) >= 0.49
    # the embeddings were not pruned (not a Linear), the kept weights moved during recovery
    assert torch.equal(model.state_dict()["model.embed_tokens.weight"] != 0, before["model.embed_tokens.weight"] != 0)


def test_structured_pruning_shrinks_the_mlp_and_reloads(tiny_base, tmp_path):
    from shipyard.models.causal_lm import load_causal_lm
    from shipyard.optimize.prune import prune_mlp_channels

    model = _float(tiny_base)
    n = sum(p.numel() for p in model.parameters())
    assert prune_mlp_channels(model, 0.25) == 48 and model.config.intermediate_size == 48
    assert sum(p.numel() for p in model.parameters()) < n
    model.save_pretrained(tmp_path)
    back = load_causal_lm(tmp_path)
    assert back.model.layers[0].mlp.down_proj.in_features == 48
    ids = torch.randint(0, 600, (1, 8))
    with torch.no_grad():
        assert torch.allclose(back(ids).logits, model(ids).logits, atol=1e-5)


def test_structured_pruning_refuses_models_without_gated_mlps():
    from transformers import GPT2Config, GPT2LMHeadModel

    from shipyard.optimize.prune import prune_mlp_channels

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100))
    with pytest.raises(ValueError, match="Llama-style MLPs.*use prune.kind unstructured"):
        prune_mlp_channels(gpt2, 0.5)


def test_distillation_loss_terms():
    from shipyard.optimize.distill import kd_loss

    logits = torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    assert kd_loss(logits, logits, labels, 2.0, 1.0).item() == pytest.approx(0.0, abs=1e-6)  # same as teacher
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1))
    assert kd_loss(logits, torch.randn(2, 5, 11), labels, 2.0, 0.0).item() == pytest.approx(ce.item(), rel=1e-5)


def test_distilled_student_starts_from_teacher_blocks_and_learns(deep_base, tiny_corpus):
    from shipyard.models.causal_lm import load_tokenizer
    from shipyard.optimize.distill import run_distill, student_from

    teacher = _float(deep_base)
    student, keep = student_from(teacher, 2)
    assert keep == [0, 3] and student.config.num_hidden_layers == 2
    assert torch.equal(student.model.layers[1].mlp.up_proj.weight, teacher.model.layers[3].mlp.up_proj.weight)
    with pytest.raises(ValueError, match="between 1 and 3"):
        student_from(teacher, 4)
    trained, out = run_distill(DistillConfig(student_layers=2, steps=20, lr=3e-3, seq_len=64), teacher, tiny_corpus,
                               load_tokenizer(deep_base))
    assert out["distill.heldout_loss"] < out["distill.heldout_loss_init"] and out["distill.param_ratio"] < 0.9


def test_optimize_chains_distill_prune_quantize_and_measures_each_step(deep_base, tiny_corpus, tmp_path):
    from shipyard.models.causal_lm import load_causal_lm
    from shipyard.optimize.optimize import REPORT_FILE, run_optimize

    cfg = OptimizeConfig(distill=DistillConfig(student_layers=2, steps=10, lr=3e-3, seq_len=64),
                         prune=PruneConfig(kind="structured", sparsity=0.25, recover_steps=5, seq_len=64),
                         quantize=QuantizeConfig(method="int8_weight_only"), report_docs=4, latency_prompts=1,
                         latency_tokens=4)
    out = run_optimize(cfg, deep_base, tmp_path / "out", corpus_dir=tiny_corpus,
                       heldout=DEMO / "heldout/python-docs.jsonl")
    steps = json.loads((tmp_path / "out" / REPORT_FILE).read_text())["steps"]
    assert [s["step"] for s in steps] == ["source", "distill (2 layers)", "prune (structured 0.25)",
                                          "quantize (int8_weight_only)"]
    assert all({"size_bytes", "ms_per_token", "perplexity"} <= set(s) for s in steps)
    assert all("perplexity_ratio" in s for s in steps[1:])
    assert out["size_ratio"] < 0.6 and out["size_ratio"] == steps[-1]["size_ratio"]
    assert steps[1]["size_bytes"] > steps[2]["size_bytes"] > steps[3]["size_bytes"]
    model = load_causal_lm(tmp_path / "out")
    assert model.config.num_hidden_layers == 2 and model.config.intermediate_size == 48


def test_optimize_config_rejects_impossible_settings(deep_base, tmp_path):
    from shipyard.optimize.optimize import run_optimize

    with pytest.raises(ValueError, match="at least one of"):
        OptimizeConfig(quantize=None)
    with pytest.raises(ValueError, match="less than 1"):
        PruneConfig(sparsity=1.0)
    with pytest.raises(ValueError, match="pass the corpus"):
        run_optimize(OptimizeConfig(distill=DistillConfig(student_layers=1)), deep_base, tmp_path)

"""The CUDA-only paths: bf16 and fp16 pretraining, resume on GPU, QLoRA, bitsandbytes 8/4-bit, PPO,
and inference on the GPU (serving in bf16, evaluate and reward scoring with device auto).

Opt in with ``pytest -m gpu tests/gpu`` on a machine with a CUDA GPU (and bitsandbytes for the
QLoRA/bnb tests); everywhere else these tests are skipped. Each prints the figures it checks.
"""

import gzip
import json
import math
import os
import signal

import pytest
import torch

from conftest import DEMO

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

# Small enough to train in seconds, big enough that bitsandbytes quantizes real matrices.
GPU_PRETRAIN = dict(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=256, context_length=128,
                    batch_size=16, max_steps=60, warmup_steps=5, lr=3e-3, checkpoint_every=0, log_every=10)


def _finite(path) -> bool:
    from safetensors.torch import load_file

    return all(torch.isfinite(t).all() for t in load_file(str(path / "model.safetensors")).values()
               if t.is_floating_point())


@pytest.fixture(scope="module")
def gpu_corpus(tmp_path_factory):
    """corpus.jsonl (a data_filter output's layout) from the demo's raw Python docs and Debian descriptions."""
    out = tmp_path_factory.mktemp("gpu-corpus")
    with open(out / "corpus.jsonl", "w") as f:
        for name in ("python-docs.jsonl.gz", "debian-descriptions.jsonl.gz"):
            with gzip.open(DEMO / "raw" / name, "rt") as src:
                for line in src:
                    f.write(json.dumps({"text": json.loads(line)["text"]}) + "\n")
    return out


@pytest.fixture(scope="module")
def gpu_tokenizer(gpu_corpus, tmp_path_factory):
    from shipyard.data.train_tokenizer import run_train_tokenizer
    from shipyard.data.train_tokenizer_config import TokenizerConfig

    out = tmp_path_factory.mktemp("gpu-tok")
    run_train_tokenizer(TokenizerConfig(vocab_size=2000, model_max_length=128), gpu_corpus, out)
    return out


@pytest.fixture(scope="module")
def gpu_base(gpu_corpus, gpu_tokenizer, tmp_path_factory):
    """A bf16-pretrained base (the test below checks the run itself)."""
    from shipyard.train.pretrain import run_pretrain
    from shipyard.train.pretrain_config import PretrainConfig

    out = tmp_path_factory.mktemp("gpu-base")
    metrics = run_pretrain(PretrainConfig(**{**GPU_PRETRAIN, "max_steps": 200}, precision="bf16"),
                           gpu_corpus, gpu_tokenizer, out)
    return out, metrics


def test_bf16_pretraining_on_cuda_learns_and_reports_mfu(gpu_base):
    out, m = gpu_base
    print(f"\nbf16 pretrain: val loss {m['val_loss_initial']:.3f} -> {m['val_loss']:.3f}, "
          f"{m['tokens_per_s']:.0f} tokens/s, MFU {100 * m['mfu']:.2f}% ({torch.cuda.get_device_name()})")
    assert m["precision_bf16"] == 1.0
    assert m["val_loss"] < m["val_loss_initial"] - 1.0
    assert 0 < m["mfu"] < 1  # the peak is known for this GPU: the run was on CUDA
    assert _finite(out)


def test_fp16_pretraining_uses_the_grad_scaler_and_learns(gpu_corpus, gpu_tokenizer, tmp_path):
    from shipyard.train.pretrain import run_pretrain
    from shipyard.train.pretrain_config import PretrainConfig

    m = run_pretrain(PretrainConfig(**GPU_PRETRAIN, precision="fp16"), gpu_corpus, gpu_tokenizer, tmp_path)
    print(f"\nfp16 pretrain: val loss {m['val_loss_initial']:.3f} -> {m['val_loss']:.3f}, "
          f"steps skipped by GradScaler: {m.get('fp16_skipped_steps', 0):.0f}")
    assert m["precision_bf16"] == 0.0 and m["steps"] == GPU_PRETRAIN["max_steps"]
    assert m["val_loss"] < m["val_loss_initial"] - 1.0
    assert _finite(tmp_path)


def test_fp16_overflow_steps_are_skipped_not_fatal(gpu_corpus, gpu_tokenizer, tmp_path, monkeypatch):
    """A loss scale of 2**32 overflows the first steps: GradScaler skips them and backs off; the run goes on."""
    from functools import partial

    from shipyard.train.pretrain import run_pretrain
    from shipyard.train.pretrain_config import PretrainConfig

    monkeypatch.setattr(torch.amp, "GradScaler", partial(torch.amp.GradScaler, init_scale=2.0**32))
    m = run_pretrain(PretrainConfig(**GPU_PRETRAIN, precision="fp16"), gpu_corpus, gpu_tokenizer, tmp_path)
    print(f"\nfp16 from scale 2**32: {m['fp16_skipped_steps']:.0f} steps skipped, "
          f"val loss {m['val_loss_initial']:.3f} -> {m['val_loss']:.3f}")
    assert 5 <= m["fp16_skipped_steps"] < 30  # log2(2**32 / the largest scale that does not overflow)
    assert m["val_loss"] < m["val_loss_initial"] - 0.5 and _finite(tmp_path)


def test_sigterm_and_resume_on_cuda_match_a_straight_run(gpu_corpus, gpu_tokenizer, tmp_path):
    """SIGTERM (sent by the run itself at step 20) checkpoints; resuming gives the straight run's curve."""
    from shipyard.train.loop import Preempted
    from shipyard.train.pretrain import run_pretrain
    from shipyard.train.pretrain_config import PretrainConfig

    # dropout draws its masks from the CUDA generator: the checkpoint must carry that state too
    cfg = PretrainConfig(**{**GPU_PRETRAIN, "max_steps": 40, "checkpoint_every": 10, "dropout": 0.1},
                         precision="bf16")
    run_pretrain(cfg, gpu_corpus, gpu_tokenizer, tmp_path / "straight", checkpoint_dir=tmp_path / "ck1")

    def kill_at_20(metrics, step):
        if step == 20 and "train_loss" in metrics:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Preempted, match="SIGTERM at step 20"):
        run_pretrain(cfg, gpu_corpus, gpu_tokenizer, tmp_path / "resumed", log=kill_at_20,
                     checkpoint_dir=tmp_path / "ck2")
    m = run_pretrain(cfg, gpu_corpus, gpu_tokenizer, tmp_path / "resumed", checkpoint_dir=tmp_path / "ck2")
    a = json.loads((tmp_path / "straight" / "loss_curve.json").read_text())
    b = json.loads((tmp_path / "resumed" / "loss_curve.json").read_text())
    drift = max(abs(x - y) for x, y in zip(a, b, strict=True))
    print(f"\nresume on CUDA: resumed at step {m['resumed_at_step']:.0f}, max |loss drift| {drift:.2e}")
    assert m["resumed_at_step"] == 20 and len(a) == len(b) == 40
    assert drift < 1e-3


def test_qlora_trains_a_4bit_base_and_merges(gpu_base, tmp_path):
    from shipyard.models.causal_lm import load_causal_lm
    from shipyard.train.finetune import run_finetune
    from shipyard.train.finetune_config import FinetuneConfig, LoraConfig

    pytest.importorskip("bitsandbytes")
    base, _ = gpu_base
    cfg = FinetuneConfig(train=str(DEMO / "instructions/train.jsonl"), method="qlora", max_examples=400,
                         max_steps=40, lr=3e-3, max_length=128, batch_size=16,
                         lora=LoraConfig(r=8, alpha=16, dropout=0.0))
    m = run_finetune(cfg, base, tmp_path)
    print(f"\nQLoRA: eval loss {m['eval_loss_before']:.3f} -> {m['eval_loss']:.3f}, "
          f"trainable {m['trainable_params']:.0f} params ({100 * m['trainable_fraction']:.2f}%)")
    assert m["eval_loss"] < m["eval_loss_before"]
    assert 0 < m["trainable_fraction"] < 0.2
    adapter = json.loads((tmp_path / "adapters" / "default" / "adapter_config.json").read_text())
    assert adapter["r"] == 8
    merged = load_causal_lm(tmp_path)  # base + adapter merged into a plain float model
    assert not any("lora" in n for n, _ in merged.named_parameters()) and _finite(tmp_path)


@pytest.mark.parametrize("method", ["bnb_int8", "bnb_nf4"])
def test_bitsandbytes_quantization_saves_loads_and_serves(gpu_base, tmp_path, method):
    from shipyard.models.causal_lm import load_causal_lm, load_tokenizer
    from shipyard.models.inference import generate
    from shipyard.optimize.optimize import run_optimize
    from shipyard.optimize.optimize_config import OptimizeConfig, QuantizeConfig

    bnb = pytest.importorskip("bitsandbytes")
    base, _ = gpu_base
    m = run_optimize(OptimizeConfig(quantize=QuantizeConfig(method=method), context_length=128, report_docs=16),
                     base, tmp_path, heldout=str(DEMO / "heldout/python-docs.jsonl"))
    print(f"\n{method}: size {m['size_bytes_before'] / 1e6:.2f} -> {m['size_bytes_after'] / 1e6:.2f} MB "
          f"(x{m['size_ratio']:.3f}), perplexity {m['perplexity_before']:.2f} -> {m['perplexity_after']:.2f} "
          f"(x{m['perplexity_ratio']:.4f}), {m['ms_per_token_after']:.2f} ms/token")
    model = load_causal_lm(tmp_path)
    layer = model.model.layers[0].mlp.down_proj
    assert isinstance(layer, bnb.nn.Linear8bitLt if method == "bnb_int8" else bnb.nn.Linear4bit)
    assert m["size_ratio"] < 1.0 and math.isfinite(m["perplexity_after"])
    assert m["perplexity_ratio"] < 1.1
    assert isinstance(generate(model, load_tokenizer(tmp_path), ["The Python"], 8)[0], str)
    report = json.loads((tmp_path / "optimize.json").read_text())  # the source was timed on the same GPU
    assert report["device"] == "cuda" and {r["device"] for r in report["steps"]} == {"cuda"}
    from shipyard.serving.llm import SamplingParams, ShipyardLLM

    llm = ShipyardLLM("q", tmp_path, 8)  # the KServe runtime: inputs go to the model's GPU
    llm.load()
    assert (llm.device, llm.dtype_name) == ("cuda", method)
    assert llm.generate("The Python", SamplingParams(8)).completion_tokens > 0


def _ppo(base, checkpoint_dir=None, **kw):
    from shipyard.data.preferences import load_prompts
    from shipyard.models.causal_lm import load_tokenizer
    from shipyard.train.align_config import AlignConfig
    from shipyard.train.finetune_config import LoraConfig
    from shipyard.train.policy import load_policy
    from shipyard.train.ppo import PPOTrainer
    from shipyard.train.rl_rewards import RewardTerm, build_reward

    cfg = AlignConfig(method="ppo", train=str(DEMO / "preferences/train.jsonl"), max_length=64, batch_size=16,
                      lr=0.01, generation={"max_new_tokens": 12},
                      rewards=[RewardTerm(kind="keywords", keywords=["the", "a", "of", "and", "to", "is", "in"])],
                      lora=LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]),
                      ppo={"minibatch_size": 8, "epochs": 2, "checkpoint_every": 2}, **kw)
    tok = load_tokenizer(base)
    prompts, _ = load_prompts(cfg.train, 200, tok)
    return PPOTrainer(cfg, load_policy(base, cfg.lora, "ppo", cfg.seed), tok, prompts,
                      build_reward(cfg.rewards, None, 64), checkpoint_dir=checkpoint_dir)


def test_ppo_on_cuda_samples_learns_and_resumes_exactly(gpu_base, tmp_path):
    """Rollouts sample on the GPU (CUDA generator); a resumed run must draw the same samples."""
    base, _ = gpu_base
    first = _ppo(base, max_steps=1)
    assert next(first.policy.parameters()).is_cuda and first.ref.copy is None
    assert first.step(first.prompts[:16])["kl"] == 0.0  # LoRA starts as the identity: policy == reference
    straight = _ppo(base, tmp_path / "a", max_steps=6).train()
    _ppo(base, tmp_path / "b", max_steps=4).train()  # "killed" after 4 iterations
    resumed = _ppo(base, tmp_path / "b", max_steps=6).train()
    print(f"\nPPO on CUDA: reward {straight['reward_first']:.3f} -> {straight['reward_last']:.3f}, "
          f"resumed reward_last {resumed['reward_last']:.6f} vs straight {straight['reward_last']:.6f}")
    assert resumed["resumed"] == 1.0 and resumed["iterations"] == 6
    assert resumed["reward_last"] == pytest.approx(straight["reward_last"], abs=1e-4)
    assert resumed["kl_coef_last"] == pytest.approx(straight["kl_coef_last"])


def test_serving_and_evaluate_run_float_models_on_the_gpu_and_int8_on_the_cpu(gpu_base, tmp_path):
    from shipyard.eval.evaluate import run_evaluate
    from shipyard.eval.evaluate_config import EvalSpec
    from shipyard.optimize.optimize_config import QuantizeConfig
    from shipyard.optimize.quantize import run_quantize
    from shipyard.serving.llm import SamplingParams, ShipyardLLM
    from shipyard.train.rl_rewards import RewardModelScorer

    base, _ = gpu_base
    llm = ShipyardLLM("base", base, 8)
    llm.load()
    assert (llm.device, llm.dtype_name) == ("cuda", "bfloat16")
    assert next(llm.model.parameters()).dtype == torch.bfloat16
    alone = llm.generate("The Python", SamplingParams(8))
    batch = llm.generate_batch(["The Python", "A list"], [SamplingParams(8)] * 2)
    assert alone.completion_tokens > 0 and len(batch) == 2
    assert list(llm.stream("The Python", SamplingParams(8)))[-1].completion_tokens > 0
    run_quantize(QuantizeConfig(method="dynamic_int8"), base, tmp_path / "int8")
    spec = EvalSpec(context_length=64, suites=[
        {"name": "heldout", "kind": "perplexity", "data": str(DEMO / "heldout/python-docs.jsonl"), "max_examples": 4},
        {"name": "latency", "kind": "latency", "data": str(DEMO / "preferences/test.jsonl"), "max_examples": 2}])
    table = run_evaluate(spec, {"base": base, "int8": tmp_path / "int8"}, tmp_path / "eval")
    devices = json.loads((tmp_path / "eval" / "timings.json").read_text())["device"]
    print(f"\nevaluate: {devices}, perplexity base {table['base']['heldout.perplexity']:.2f} "
          f"int8 {table['int8']['heldout.perplexity']:.2f}")
    assert devices == {"base": "cuda", "int8": "cpu"}
    assert table["int8"]["heldout.perplexity"] / table["base"]["heldout.perplexity"] < 1.1
    assert RewardModelScorer(base, 64).device == "cuda"


def test_the_alignment_judgement_runs_on_the_gpu(gpu_base, tmp_path):
    """align's instruct-vs-aligned judgement: a model against itself wins half and has KL 0."""
    import shutil

    from shipyard.train.align import evaluate_alignment
    from shipyard.train.align_config import AlignConfig
    from shipyard.train.rl_rewards import RewardTerm, build_reward

    base, _ = gpu_base
    cfg = AlignConfig(method="ppo", train=str(DEMO / "preferences/train.jsonl"), max_length=64,
                      generation={"max_new_tokens": 8}, rewards=[RewardTerm(kind="keywords", keywords=["the"])])
    same = shutil.copytree(base, tmp_path / "same")  # the judgement writes its samples beside the model
    m, _ = evaluate_alignment(cfg, same, same, ["The Python", "A list is"] * 4, build_reward(cfg.rewards, None, 64))
    assert m["win_rate"] == 0.5 and abs(m["kl_to_instruct"]) < 1e-3

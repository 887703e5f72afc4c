"""The pretrain stage: three objectives, sizing, accumulation, resume after SIGTERM, NaN, DDP."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from pydantic import ValidationError

from conftest import REPO, TINY_PRETRAIN
from shipyard.train.pretrain_config import PretrainConfig


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("objective,architecture", [
    ("clm", "llama"), ("clm", "gpt2"), ("mlm", "bert"), ("mlm", "roberta"), ("span", "t5")])
def test_every_objective_trains_a_tiny_model(objective, architecture, tiny_corpus, tiny_tokenizer, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM

    from shipyard.train.pretrain import run_pretrain

    cfg = PretrainConfig(**{**TINY_PRETRAIN, "max_steps": 25}, objective=objective, architecture=architecture,
                         checkpoint_every=0)
    init_dir = tmp_path / "init"
    out = run_pretrain(cfg.model_copy(update={"max_steps": 1, "lr": 1e-9, "warmup_steps": 0}),
                       tiny_corpus, tiny_tokenizer, init_dir)
    out = run_pretrain(cfg, tiny_corpus, tiny_tokenizer, tmp_path / "m")
    assert out["val_loss"] < out["val_loss_initial"] - 0.4, out
    before, after = _weights(init_dir), _weights(tmp_path / "m")
    assert sum(not torch.allclose(before[k], after[k]) for k in after) >= len(after) // 2
    loader = {"clm": AutoModelForCausalLM, "mlm": AutoModelForMaskedLM, "span": AutoModelForSeq2SeqLM}[objective]
    model = loader.from_pretrained(tmp_path / "m", use_safetensors=True)  # the saved model loads back
    assert AutoConfig.from_pretrained(tmp_path / "m").model_type == architecture
    assert model.get_input_embeddings().num_embeddings == out["added_special_tokens"] + 600
    assert out["train_flops"] == 6 * out["n_params"] * out["train_tokens"]


def test_span_corruption_shapes_and_round_trip():
    from shipyard.train.objectives import span_corrupt, span_lengths

    rows = torch.arange(100, 164).view(2, 32)
    sentinels = list(range(10, 20))
    gen = torch.Generator().manual_seed(0)
    inputs, targets = span_corrupt(rows, sentinels, eos_id=1, noise_density=0.15, mean_span=3, gen=gen)
    noise, spans = span_lengths(32, 0.15, 3)
    assert inputs.shape == (2, 32 - noise + spans + 1) and targets.shape == (2, noise + spans + 1)
    for row, inp, tgt in zip(rows.tolist(), inputs.tolist(), targets.tolist(), strict=True):
        # Re-inserting each sentinel's target span into the input restores the original row.
        spans_by_sentinel, cur = {}, None
        for t in tgt[:-1]:
            if t in sentinels:
                cur = t
                spans_by_sentinel[cur] = []
            else:
                spans_by_sentinel[cur].append(t)
        restored = [t for tok in inp[:-1] for t in (spans_by_sentinel[tok] if tok in sentinels else [tok])]
        assert restored == row


def test_mlm_masks_about_15_percent_never_special_tokens():
    from shipyard.train.objectives import mlm_mask

    rows = torch.randint(5, 500, (64, 128))
    rows[:, 0] = 2  # a special token at the start of every row
    inputs, labels = mlm_mask(rows, mask_id=4, vocab_size=500, special_ids=[2], probability=0.15,
                              gen=torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert 0.13 < chosen.float().mean() < 0.17 and not chosen[:, 0].any()
    assert 0.75 < (inputs[chosen] == 4).float().mean() < 0.85
    assert torch.equal(labels[chosen], rows[chosen]) and torch.equal(inputs[~chosen], rows[~chosen])


def test_chinchilla_sizing_and_budget_config():
    from shipyard.train.sizing import PF_DAY, chinchilla, chinchilla_shape

    opt = chinchilla(5.76e23)  # Chinchilla's own budget: ~70B parameters, ~1.4T tokens
    assert 6.5e10 < opt["params"] < 7.5e10 and 1.3e12 < opt["tokens"] < 1.5e12
    assert opt["pf_days"] == pytest.approx(5.76e23 / PF_DAY)
    shape = chinchilla_shape(1e15, tokens_per_step=4096)
    n = 12 * shape["num_layers"] * shape["hidden_size"] ** 2
    assert 0.5 < n / chinchilla(1e15)["params"] < 2 and shape["hidden_size"] % shape["num_heads"] == 0
    sized = PretrainConfig(compute_budget_flops=1e15, batch_size=8, context_length=128, warmup_steps=5).sized()
    assert sized.hidden_size == shape["hidden_size"] and sized.max_steps == -(-chinchilla(1e15)["tokens"] // 1024)
    with pytest.raises(ValidationError, match="do not also set"):
        PretrainConfig(compute_budget_flops=1e15, hidden_size=64)


@pytest.mark.parametrize("bad,match", [
    (dict(objective="mlm", architecture="llama"), "mlm trains an encoder"),
    (dict(objective="span", architecture="bert"), "needs architecture in"),
    (dict(hidden_size=30, num_heads=4), "divisible"),
    (dict(warmup_steps=50, max_steps=50), "warmup_steps"),
    (dict(grad_accum_steps=0), "greater than 0"),
    (dict(unknown=1), "Extra inputs"),
])
def test_impossible_pretrain_configs_fail_at_load(bad, match):
    with pytest.raises(ValidationError, match=match):
        PretrainConfig(**bad)


def test_fp16_on_cpu_and_tiny_corpus_fail_with_counts(tiny_corpus, tiny_tokenizer, tmp_path):
    from shipyard.train.pretrain import run_pretrain

    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        run_pretrain(PretrainConfig(**TINY_PRETRAIN, precision="fp16"), tiny_corpus, tiny_tokenizer, tmp_path / "a")
    with pytest.raises(ValueError, match=r"training blocks .* one optimizer step needs 4096"):
        run_pretrain(PretrainConfig(**{**TINY_PRETRAIN, "batch_size": 4096}), tiny_corpus, tiny_tokenizer, tmp_path)


def test_mfu_is_logged_with_a_known_peak(tiny_corpus, tiny_tokenizer, tmp_path):
    from shipyard.train.pretrain import run_pretrain

    logged = []
    out = run_pretrain(PretrainConfig(**{**TINY_PRETRAIN, "max_steps": 10}, peak_tflops=1.0, log_every=5),
                       tiny_corpus, tiny_tokenizer, tmp_path, log=lambda m, s: logged.append((s, m)))
    steps = [s for s, m in logged if "mfu" in m]
    assert steps == [5, 10] and 0 < out["mfu"] < 1
    assert out["mfu"] == pytest.approx(out["model_flops_per_token"] * out["tokens_per_s"] / 1e12)


def _launch(args: dict, tmp_path, name: str):
    spec = tmp_path / f"{name}.json"
    spec.write_text(json.dumps(args))
    return subprocess.Popen([sys.executable, "-m", "shipyard.train.launch", str(spec)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_sigterm_checkpoint_and_resume_match_a_straight_run(tiny_corpus, tiny_tokenizer, tmp_path):
    """Kill a run with SIGTERM mid-way, resume it: the loss curve equals an uninterrupted run's."""
    from shipyard.train.checkpoint import latest
    from shipyard.train.pretrain import run_pretrain

    cfg = PretrainConfig(**{**TINY_PRETRAIN, "max_steps": 40, "dropout": 0.1}, checkpoint_every=5, log_every=5)
    torch.set_num_threads(1)
    straight = run_pretrain(cfg, tiny_corpus, tiny_tokenizer, tmp_path / "straight",
                            checkpoint_dir=tmp_path / "ck-straight")
    ck = tmp_path / "ck-killed"
    proc = _launch({"config": cfg.model_dump(), "corpus": str(tiny_corpus), "tokenizer": str(tiny_tokenizer),
                    "output": str(tmp_path / "killed"), "checkpoint_dir": str(ck), "metrics": None}, tmp_path, "k")
    deadline = time.time() + 120
    while not (ck / "step-000010").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0 and "Preempted" in output and "SIGTERM at step" in output
    stopped = int(latest(ck).name.removeprefix("step-"))
    assert 10 <= stopped < 40 and not (tmp_path / "killed" / "model.safetensors").exists()

    resumed = run_pretrain(cfg, tiny_corpus, tiny_tokenizer, tmp_path / "killed", checkpoint_dir=ck)
    assert resumed["resumed_at_step"] == stopped
    a = json.loads((tmp_path / "straight" / "loss_curve.json").read_text())
    b = json.loads((tmp_path / "killed" / "loss_curve.json").read_text())
    assert len(a) == len(b) == 40
    assert b == pytest.approx(a, abs=1e-5)
    wa, wb = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    assert resumed["val_loss"] == pytest.approx(straight["val_loss"], abs=1e-5)
    assert len(list(ck.glob("step-*"))) == cfg.keep_checkpoints


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_corpus, tiny_tokenizer, tmp_path):
    from shipyard.models.builders import build_model
    from shipyard.models.causal_lm import load_tokenizer
    from shipyard.train.distributed import Dist
    from shipyard.train.loop import NonFiniteLoss, fit
    from shipyard.train.objectives import Objective, pack_corpus

    cfg = PretrainConfig(**TINY_PRETRAIN, checkpoint_every=5, log_every=5)
    tok = load_tokenizer(tiny_tokenizer)
    blocks = pack_corpus(tiny_corpus, tok, cfg.context_length)
    model = build_model(cfg, tok)
    calls = {"n": 0}

    def poison(module, args, output):  # from the 13th training forward on, logits are NaN
        calls["n"] += 1
        return output * float("nan") if calls["n"] > 13 else output

    model.lm_head.register_forward_hook(poison)
    with pytest.raises(NonFiniteLoss,
                       match=r"non-finite loss \(nan\) at step 13; the last good checkpoint is .*step-000010"):
        fit(cfg, model, Objective(cfg, tok), blocks[4:], blocks[:4], Dist(), tmp_path / "ck", lambda m, s: None)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["step-000005", "step-000010"]


def test_ddp_on_two_cpu_processes_matches_one_process(tiny_corpus, tiny_tokenizer, tmp_path):
    """torchrun, 2 ranks on gloo, batch 4 each == 1 process, batch 4 x 2 accumulation == batch 8."""
    from shipyard.train.pretrain import run_pretrain

    base = {**TINY_PRETRAIN, "max_steps": 12, "checkpoint_every": 0}
    torch.set_num_threads(1)
    logged = []
    ddp = run_pretrain(PretrainConfig(**{**base, "batch_size": 4}, nproc_per_node=2), tiny_corpus, tiny_tokenizer,
                       tmp_path / "ddp", log=lambda m, s: logged.append(s))
    accum = run_pretrain(PretrainConfig(**{**base, "batch_size": 4}, grad_accum_steps=2), tiny_corpus,
                         tiny_tokenizer, tmp_path / "accum")
    whole = run_pretrain(PretrainConfig(**{**base, "batch_size": 8}), tiny_corpus, tiny_tokenizer, tmp_path / "one")
    curves = [json.loads((tmp_path / d / "loss_curve.json").read_text()) for d in ("ddp", "accum", "one")]
    assert curves[0] == pytest.approx(curves[1], abs=2e-5) and curves[1] == pytest.approx(curves[2], abs=2e-5)
    w = [_weights(tmp_path / d) for d in ("ddp", "accum", "one")]
    assert all(torch.allclose(w[0][k], w[1][k], atol=1e-4) and torch.allclose(w[1][k], w[2][k], atol=1e-4)
               for k in w[0])
    assert ddp["train_tokens"] == accum["train_tokens"] == whole["train_tokens"] == 12 * 8 * 128
    assert 0 in logged and 12 in logged  # rank 0's metrics reached the launching process


def test_cli_pretrains_an_encoder_from_a_pretrain_section(tiny_corpus, tiny_tokenizer, tmp_path):
    from typer.testing import CliRunner

    from shipyard.cli import app

    cfg = tmp_path / "mlm.yaml"
    cfg.write_text("pretrain:\n  objective: mlm\n  architecture: roberta\n" + "".join(
        f"  {k}: {v}\n" for k, v in {**TINY_PRETRAIN, "max_steps": 6}.items()))
    args = ["pretrain", "-c", str(cfg), "--corpus", str(tiny_corpus), "--tokenizer", str(tiny_tokenizer),
            "--output", str(tmp_path / "m")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "saved mlm/roberta model" in res.output and (tmp_path / "m" / "model.safetensors").exists()
    cfg.write_text("pretrain:\n  objective: mlm\n  architecture: llama\n")
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "mlm.yaml:1: pretrain: Value error, objective 'mlm' needs architecture" in res.output


def test_fsdp_on_two_cpu_processes_matches_and_checkpoints(tiny_corpus, tiny_tokenizer, tmp_path):
    """FSDP2 shards per decoder layer; its full-state checkpoint resumes into a sharded model."""
    from shipyard.train.pretrain import run_pretrain

    base = {**TINY_PRETRAIN, "max_steps": 8, "batch_size": 4, "checkpoint_every": 4}
    torch.set_num_threads(1)
    cfg = PretrainConfig(**base, nproc_per_node=2, strategy="fsdp")
    run_pretrain(cfg, tiny_corpus, tiny_tokenizer, tmp_path / "first", checkpoint_dir=tmp_path / "ck")
    __import__("shutil").rmtree(tmp_path / "ck" / "step-000008")  # as if killed after the step-4 checkpoint
    resumed = run_pretrain(cfg, tiny_corpus, tiny_tokenizer, tmp_path / "fsdp", checkpoint_dir=tmp_path / "ck")
    run_pretrain(PretrainConfig(**base, grad_accum_steps=2), tiny_corpus, tiny_tokenizer, tmp_path / "one")
    assert resumed["resumed_at_step"] == 4
    a, b = (json.loads((tmp_path / d / "loss_curve.json").read_text()) for d in ("fsdp", "one"))
    assert a == pytest.approx(b, abs=2e-5)
    wa, wb = _weights(tmp_path / "fsdp"), _weights(tmp_path / "one")
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)


def test_torch_compile_matches_eager_and_resumes(tiny_corpus, tiny_tokenizer, tmp_path):
    """compile: true (inductor on CPU needs a C compiler): same losses as eager, checkpoints resume."""
    import shutil

    from shipyard.train.pretrain import run_pretrain

    cfg = PretrainConfig(**{**TINY_PRETRAIN, "max_steps": 6, "warmup_steps": 1}, checkpoint_every=3)
    run_pretrain(cfg.model_copy(update={"compile": True}), tiny_corpus, tiny_tokenizer, tmp_path / "full",
                 checkpoint_dir=tmp_path / "ck")
    shutil.rmtree(tmp_path / "ck" / "step-000006")  # as if killed after the step-3 checkpoint
    compiled = run_pretrain(cfg.model_copy(update={"compile": True}), tiny_corpus, tiny_tokenizer, tmp_path / "c",
                            checkpoint_dir=tmp_path / "ck")
    eager = run_pretrain(cfg, tiny_corpus, tiny_tokenizer, tmp_path / "e")
    assert compiled["resumed_at_step"] == 3 and eager["resumed_at_step"] == 0
    a, b = (json.loads((tmp_path / d / "loss_curve.json").read_text()) for d in ("c", "e"))
    assert a == pytest.approx(b, abs=1e-4)


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_packed_causal_attention_is_exact_and_still_applies_padding_masks(architecture, tiny_tokenizer):
    """Packed rows use SDPA's causal flag (flash attention on a GPU, also under torch.compile); padding still masks."""
    from shipyard.models.builders import PACKED_CAUSAL, build_model, packed_causal_attention
    from shipyard.models.causal_lm import load_tokenizer

    torch.manual_seed(0)
    model = build_model(PretrainConfig(**TINY_PRETRAIN, architecture=architecture), load_tokenizer(tiny_tokenizer))
    model.eval()
    x = torch.randint(3, 600, (2, 32))
    pad = torch.ones_like(x)
    pad[0, :5] = 0
    with torch.no_grad():
        loss, padded = model(input_ids=x, labels=x).loss, model(input_ids=x, attention_mask=pad).logits
        assert packed_causal_attention(model) == "sdpa" and model.config._attn_implementation == PACKED_CAUSAL
        assert torch.allclose(model(input_ids=x, labels=x).loss, loss, atol=1e-6)
        assert torch.allclose(model(input_ids=x, attention_mask=pad).logits, padded, atol=1e-5)
        compiled = torch.compile(model)  # where transformers would build an explicit mask
        assert torch.allclose(compiled(input_ids=x, labels=x).loss, loss, atol=1e-5)
    model.set_attn_implementation("sdpa")
    assert packed_causal_attention(model.eval()) == "sdpa"  # idempotent registration

"""Knowledge distillation: a shallower student learns the teacher's token distributions.

The student is the teacher's architecture with ``student_layers`` blocks, initialized from evenly
spaced teacher blocks (DistilBERT's recipe) plus the teacher's embeddings, norms and head. Loss
per token (Hinton et al.):

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, next token)

The T^2 keeps the soft term's gradient scale independent of the temperature.
"""

from __future__ import annotations

import re
from pathlib import Path

_LAYER = re.compile(r"^(.*\.(?:layers|h|block)\.)(\d+)(\..*)$")


def student_from(teacher, layers: int):
    """A copy of ``teacher`` keeping ``layers`` evenly spaced blocks (first and last included)."""
    import copy

    from transformers import AutoModelForCausalLM

    total = teacher.config.num_hidden_layers
    if not 1 <= layers < total:
        raise ValueError(f"distill.student_layers must be between 1 and {total - 1} (the teacher has {total})")
    keep = [round(i * (total - 1) / (layers - 1)) for i in range(layers)] if layers > 1 else [total - 1]
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    student = AutoModelForCausalLM.from_config(config)
    source = {}
    for key, value in teacher.state_dict().items():
        m = _LAYER.match(key)
        if m is None:
            source[key] = value
        elif int(m.group(2)) in keep:
            source[f"{m.group(1)}{keep.index(int(m.group(2)))}{m.group(3)}"] = value
    missing, unexpected = student.load_state_dict(source, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"student init from teacher: missing={missing[:5]} unexpected={unexpected[:5]}")
    student.tie_weights()
    return student, keep


def kd_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float):
    """The distillation loss over next-token positions (logits [b, t, v], labels [b, t])."""
    import torch.nn.functional as F

    s, t = student_logits[:, :-1].float(), teacher_logits[:, :-1].float()
    vocab = s.shape[-1]
    soft = F.kl_div(F.log_softmax(s / temperature, -1).reshape(-1, vocab),
                    F.log_softmax(t / temperature, -1).reshape(-1, vocab),
                    log_target=True, reduction="batchmean") * temperature ** 2
    hard = F.cross_entropy(s.reshape(-1, vocab), labels[:, 1:].reshape(-1))
    return alpha * soft + (1 - alpha) * hard


def run_distill(cfg, teacher, corpus_dir: str | Path, tokenizer, log=None):
    """Train a student per ``cfg`` (a DistillConfig); returns (student, metrics)."""
    import torch

    from shipyard.optimize.text_train import corpus_blocks, eval_loss, lm_loss, train_steps

    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student, keep = student_from(teacher, cfg.student_layers)
    blocks, heldout = corpus_blocks(corpus_dir, tokenizer, cfg.seq_len)

    def loss_fn(model, ids):
        with torch.no_grad():
            t = teacher(input_ids=ids).logits
        return kd_loss(model(input_ids=ids).logits, t, ids, cfg.temperature, cfg.alpha)

    initial = eval_loss(student, heldout, lm_loss)
    train_steps(student, list(student.parameters()), blocks, loss_fn, cfg.steps, cfg.lr, cfg.batch_size, cfg.seed, log)
    n_t, n_s = (sum(p.numel() for p in m.parameters()) for m in (teacher, student))
    return student, {"distill.teacher_params": float(n_t), "distill.student_params": float(n_s),
                     "distill.param_ratio": n_s / n_t, "distill.kept_layers": float(len(keep)),
                     # next-token loss on held-out corpus blocks: the teacher's, the student's at init and trained
                     "distill.heldout_loss_teacher": eval_loss(teacher, heldout, lm_loss),
                     "distill.heldout_loss_init": initial, "distill.heldout_loss": eval_loss(student, heldout, lm_loss)}

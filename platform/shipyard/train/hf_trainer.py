"""What the transformers/TRL-based stages share: trainer arguments and forwarding logs to MLflow."""

from __future__ import annotations

from shipyard.schema import MetricsLogger


def trainer_args(cfg) -> dict:
    """Keyword arguments common to every HF/TRL TrainingArguments subclass we build.

    No checkpoints are written by the Trainer here (the stage saves its own output), and nothing
    is reported to third parties: metrics go through ``LogForwarder`` to the stage's MLflow run.
    ``cfg.precision`` (auto: bf16 autocast where the device computes bf16 natively) sets ``bf16``.
    """
    import tempfile

    import torch

    from shipyard.models.device import train_precision

    return dict(
        output_dir=tempfile.mkdtemp(prefix="shipyard-trainer-"),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        learning_rate=cfg.lr,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, cfg.max_steps // 10),
        logging_steps=max(1, cfg.max_steps // 10),
        save_strategy="no",
        report_to=[],
        seed=cfg.seed,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        bf16=train_precision(getattr(cfg, "precision", "fp32")) == "bf16",
        # TRL's configs turn activation recomputation on by default: more compute per step to save
        # activation memory these batch sizes never run short of (SmolLM2 reward-model step 2.4 -> 2.1 s)
        gradient_checkpointing=False,
    )


def quiet(trainer):
    """Drop the Trainer's stdout printer: logs already go to MLflow through ``log_forwarder``."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def log_forwarder(log: MetricsLogger):
    """A TrainerCallback that hands every numeric log entry to ``log(metrics, step)``."""
    from transformers import TrainerCallback

    class LogForwarder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            numeric = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float))}
            if numeric:
                log(numeric, state.global_step)

    return LogForwarder()



"""The pretraining loop: accumulation, mixed precision, clipping, warmup+cosine, MFU, checkpoints.

Deterministic by construction: rows come from a per-epoch permutation with a cursor (the data
position a checkpoint stores), and each micro-batch's randomness (MLM masks, T5 spans) from a
generator seeded by (seed, step, global micro-batch index). So a run killed and resumed, or the
same global batch split over DDP processes, sees exactly the batches of one straight run.

The GPU is synchronised only every ``log_every`` steps and at checkpoints: that is where losses
are read, checked for NaN/inf and logged.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import time
from pathlib import Path

from shipyard.schema import MetricsLogger
from shipyard.train.checkpoint import TrainerState, latest, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from shipyard.train.distributed import Dist
from shipyard.train.objectives import step_seed
from shipyard.train.sizing import device_peak_flops, flops_per_token


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN/inf; the last good checkpoint is kept, nothing after it is saved."""


class Preempted(RuntimeError):
    """SIGTERM arrived: a checkpoint was written and the run stopped; rerun to resume."""


def lr_at(step: int, cfg) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.lr * cfg.min_lr_ratio at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min((step - cfg.warmup_steps) / max(cfg.max_steps - cfg.warmup_steps, 1), 1.0)
    floor = cfg.min_lr_ratio
    return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


class Sampler:
    """Rows in a fresh permutation per epoch; (epoch, cursor) is the resumable data position."""

    def __init__(self, n: int, seed: int, state: TrainerState):
        self.n, self.seed, self.state = n, seed, state
        self._perm, self._perm_epoch = None, -1

    def _order(self):
        import torch

        if self._perm_epoch != self.state.epoch:
            gen = torch.Generator().manual_seed(self.seed * 7919 + self.state.epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=gen), self.state.epoch
        return self._perm

    def take(self, k: int):
        import torch

        out = []
        while k:
            order = self._order()
            part = order[self.state.cursor : self.state.cursor + k]
            out.append(part)
            k -= len(part)
            self.state.cursor += len(part)
            if self.state.cursor >= self.n:
                self.state.epoch, self.state.cursor = self.state.epoch + 1, 0
        return torch.cat(out)


def resolve_precision(precision: str, device: str) -> str:
    import torch

    cuda = device.startswith("cuda")
    if precision == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and not cuda:
        raise ValueError("precision fp16 needs a CUDA GPU (loss scaling); use fp32 or bf16 on CPU")
    return precision


def make_optimizer(model, cfg):
    """AdamW; weight decay on matrices only, norms and biases are left alone (as in nanoGPT).

    On CUDA the fused kernel updates every parameter in one launch (nanoGPT does the same); FSDP's
    sharded (DTensor) parameters keep the default multi-tensor path.
    """
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    fused = bool(params) and all(p.is_cuda and not hasattr(p, "device_mesh") for p in params)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95), fused=fused or None)


def evaluate_loss(model, objective, rows, batch_size: int, seed: int, device: str, dtype) -> float:
    """Mean loss over held-out rows (fixed masks/spans for mlm/span, so values are comparable)."""
    import torch

    model.eval()
    total, n = 0.0, 0
    with torch.no_grad(), _autocast(device, dtype):
        for i in range(0, len(rows), batch_size):
            gen = torch.Generator().manual_seed(step_seed(seed, 10**9, i))
            batch = {k: v.to(device) for k, v in objective.batch(rows[i : i + batch_size], gen).items()}
            total += model(**batch).loss.float().item() * len(batch["input_ids"])
            n += len(batch["input_ids"])
    model.train()
    return total / n


def _autocast(device: str, dtype):
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


class _StopFlag:
    """Turns SIGTERM into a flag the loop checks after each optimizer step."""

    def __init__(self):
        self.set = False
        self._old = None

    def __enter__(self):
        with contextlib.suppress(ValueError):  # not the main thread: no handler, no preemption support
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.set = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def fit(cfg, model, objective, train, val, dist: Dist, checkpoint_dir, log: MetricsLogger,
        digest: str = "", mirror=None) -> tuple[TrainerState, dict[str, float]]:
    """Train ``model`` in place for ``cfg.max_steps`` optimizer steps; returns (state, summary metrics).

    Raises:
        NonFiniteLoss: the loss or gradient norm became NaN/inf.
        Preempted: SIGTERM arrived (after a checkpoint was written).
    """
    import torch

    from shipyard.models.builders import flop_params

    device = dist.device
    precision = resolve_precision(cfg.precision, device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    n_flop_params = flop_params(model)
    model.to(device)
    wrapped = dist.wrap(model, cfg.strategy)
    # Only the forward runs compiled: checkpoints, the optimizer and clipping see the plain module,
    # whose parameter names (and so its saved state) do not depend on the compile flag.
    runner = torch.compile(wrapped) if cfg.compile else wrapped
    optimizer = make_optimizer(wrapped, cfg)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    state, resumed = _resume(cfg, wrapped, optimizer, scaler, dist, checkpoint_dir, mirror, digest)
    sampler = Sampler(len(train), cfg.seed, state)
    world, accum, bsz = dist.world, cfg.grad_accum_steps, cfg.batch_size
    peak = cfg.peak_tflops * 1e12 if cfg.peak_tflops else (
        device_peak_flops(torch.cuda.get_device_name(device), precision) if device.startswith("cuda") else None)
    per_token = flops_per_token(n_flop_params, cfg.num_layers, cfg.hidden_size, cfg.context_length)

    summary: dict[str, float] = {"precision_bf16": float(precision == "bf16"), "resumed_at_step": float(state.step)}
    if state.step == 0:
        summary["val_loss_initial"] = evaluate_loss(wrapped, objective, val, bsz, cfg.seed, device, dtype)
        log({"val_loss": summary["val_loss_initial"]}, 0)
    progress = _Progress(cfg, state, summary, scaler, dist, log, peak, per_token)
    progress.last_good = resumed

    with _StopFlag() as stop:
        for step in range(state.step, cfg.max_steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            rows = sampler.take(bsz * accum * world)
            total, tokens = _accumulate(cfg, step, rows, train, objective, runner, wrapped, scaler, dist, dtype)
            progress.tokens_window += tokens
            norm = _optimizer_step(cfg, wrapped, optimizer, scaler)
            state.step = step + 1
            state.tokens += bsz * accum * world * cfg.context_length
            progress.pending.append((step, dist.all_mean(total), norm.detach().float()))
            last = state.step == cfg.max_steps
            if state.step % cfg.log_every == 0 or last:
                progress.flush()
            stop_now = any(dist.gather(stop.set))
            if stop_now or (cfg.checkpoint_every and (state.step % cfg.checkpoint_every == 0 or last)):
                progress.flush()
                if checkpoint_dir is not None:
                    progress.last_good = _checkpoint(cfg, wrapped, optimizer, scaler, state, dist, checkpoint_dir,
                                                     mirror)
            if stop_now:
                raise Preempted(f"SIGTERM at step {state.step}: checkpoint {progress.last_good}; "
                                f"rerun with resume: auto")
    progress.flush()
    summary["val_loss"] = evaluate_loss(wrapped, objective, val, bsz, cfg.seed, device, dtype)
    log({"val_loss": summary["val_loss"]}, state.step)
    summary["train_seconds"] = progress.t_train
    summary["tokens_per_s"] = progress.tokens_trained / progress.t_train if progress.t_train else 0.0
    if peak:
        summary["mfu"] = per_token * summary["tokens_per_s"] / (peak * world)
    summary["flop_params"] = n_flop_params
    summary["model_flops_per_token"] = per_token
    return state, summary


def _resume(cfg, wrapped, optimizer, scaler, dist: Dist, checkpoint_dir, mirror, digest: str):
    """(state, the checkpoint resumed from or None): with ``resume: auto`` the newest checkpoint, its
    optimizer, RNG and (fp16) loss-scale state; a checkpoint of another config is refused."""
    state, ckpt = TrainerState(config_digest=digest), None
    if cfg.resume == "auto":
        if mirror is not None and dist.local_rank == 0:  # the artifact store decides where to resume
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            mirror.pull_latest(Path(checkpoint_dir))
        dist.barrier()
        ckpt = latest(checkpoint_dir)
    if ckpt is None:
        return state, None
    state, rng = load_checkpoint(ckpt, wrapped, optimizer)
    if digest and state.config_digest and state.config_digest != digest:
        raise ValueError(f"checkpoint {ckpt} was written by a different training config "
                         f"({state.config_digest[:12]} != {digest[:12]}); use another checkpoint_dir "
                         f"or resume: never")
    set_rng_state(rng[dist.rank] if dist.rank < len(rng) else rng[0], dist.device)
    if scaler is not None and "grad_scaler" in state.extra:  # fp16: resume at the scale it had learned
        scaler.load_state_dict(state.extra["grad_scaler"])
    return state, ckpt


def _accumulate(cfg, step: int, rows, train, objective, runner, wrapped, scaler, dist: Dist, dtype):
    """Forward and backward over this rank's micro-batches of one optimizer step: (summed loss, tokens seen)."""
    import torch

    device, world, accum, bsz = dist.device, dist.world, cfg.grad_accum_steps, cfg.batch_size
    pin = device.startswith("cuda")
    total, tokens = torch.zeros((), device=device), 0
    for m in range(accum):
        micro = m * world + dist.rank
        gen = torch.Generator().manual_seed(step_seed(cfg.seed, step, micro))
        batch = objective.batch(train[rows[micro * bsz : (micro + 1) * bsz]], gen)
        tokens += objective.tokens(batch["input_ids"]) * world
        # pinned host memory makes the copy asynchronous: the CPU queues the next step while the GPU runs
        batch = {k: (v.pin_memory() if pin else v).to(device, non_blocking=True) for k, v in batch.items()}
        sync = contextlib.nullcontext()
        if world > 1 and m < accum - 1 and hasattr(wrapped, "no_sync"):
            sync = wrapped.no_sync()  # DDP: all-reduce gradients once per optimizer step
        with sync:
            with _autocast(device, dtype):
                loss = runner(**batch).loss / accum
            (scaler.scale(loss) if scaler else loss).backward()
        total += loss.detach().float()
    return total, tokens


def _optimizer_step(cfg, wrapped, optimizer, scaler):
    """Clip, step (through GradScaler under fp16) and clear the gradients; returns the gradient norm."""
    import torch

    if scaler:
        scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(wrapped.parameters(), cfg.grad_clip)
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor holding the global norm
        norm = norm.full_tensor()
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def _checkpoint(cfg, wrapped, optimizer, scaler, state: TrainerState, dist: Dist, checkpoint_dir, mirror):
    """Save a checkpoint (every rank's RNG, fp16's loss scale), mirror it to the artifact store; returns its path."""
    rng = dist.gather(rng_state(dist.device))
    if scaler is not None:
        state.extra["grad_scaler"] = scaler.state_dict()
    path = save_checkpoint(checkpoint_dir, wrapped, optimizer, state, rng, cfg.keep_checkpoints)
    if mirror is not None and dist.main:
        mirror.push(path, cfg.keep_checkpoints)
    dist.barrier()
    return path


class _Progress:
    """The steps not yet read back from the device, and the throughput window: ``flush`` reads them back
    once per ``log_every`` steps (one host sync), checks them for NaN/inf and logs loss, norm, lr, tokens/s."""

    def __init__(self, cfg, state: TrainerState, summary: dict, scaler, dist: Dist, log: MetricsLogger, peak,
                 per_token: float):
        self.cfg, self.state, self.summary, self.scaler, self.dist, self.log = cfg, state, summary, scaler, dist, log
        self.peak, self.per_token = peak, per_token
        self.pending: list = []  # (step, loss tensor, grad-norm tensor)
        self.last_good = None
        self.t_window, self.tokens_window, self.t_train, self.tokens_trained = time.perf_counter(), 0, 0.0, 0

    def flush(self) -> None:
        import torch

        if not self.pending:
            return
        cfg, scaler = self.cfg, self.scaler
        values = torch.stack([torch.stack([loss, norm]) for _, loss, norm in self.pending]).float().cpu().tolist()
        where = (f"the last good checkpoint is {self.last_good}" if self.last_good
                 else "no checkpoint was written yet")
        for (step, _, _), (loss, norm) in zip(self.pending, values, strict=True):
            if scaler is not None and math.isfinite(loss) and not math.isfinite(norm):
                # fp16: an overflowing gradient is GradScaler's signal; it skipped this step and halved the scale
                self.summary["fp16_skipped_steps"] = self.summary.get("fp16_skipped_steps", 0.0) + 1
            elif not (math.isfinite(loss) and math.isfinite(norm)):
                raise NonFiniteLoss(f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} "
                                    f"({loss if not math.isfinite(loss) else norm}) at step {step + 1}; {where}; "
                                    f"lower lr ({cfg.lr}) or raise warmup_steps ({cfg.warmup_steps})")
            self.state.losses.append(loss)
        if scaler is not None and scaler.get_scale() < 1.0:
            raise NonFiniteLoss(f"fp16 gradients overflow even with a loss scale below 1 "
                                f"(step {self.pending[-1][0] + 1}); {where}; use precision bf16, "
                                f"or lower lr ({cfg.lr})")
        self._log(values)
        self.pending.clear()
        self.t_window, self.tokens_window = time.perf_counter(), 0

    def _log(self, values: list) -> None:
        norms = [v[1] for v in values if math.isfinite(v[1])]
        elapsed = time.perf_counter() - self.t_window
        self.t_train += elapsed
        self.tokens_trained += self.tokens_window
        tps = self.tokens_window / elapsed
        metrics = {"train_loss": sum(v[0] for v in values) / len(values), "grad_norm": norms[-1] if norms else 0.0,
                   "lr": lr_at(self.pending[-1][0], self.cfg), "tokens_per_s": tps}
        if self.peak:
            metrics["mfu"] = self.per_token * tps / (self.peak * self.dist.world)
        if self.dist.main:
            self.log(metrics, self.state.step)

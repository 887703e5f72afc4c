"""Training checkpoints: model, optimizer, RNG and data position, safetensors + JSON (no pickle).

    <checkpoint_dir>/step-000050/{model,optimizer,rng}.safetensors + trainer_state.json

A checkpoint is written to a temporary folder and renamed into place, so a run killed mid-write
never leaves a half checkpoint that ``latest`` would pick. State dicts come from
``torch.distributed.checkpoint.state_dict`` with full (unsharded) tensors, which works the same for
a plain module, DDP and FSDP.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    """What, besides tensors, a resumed run needs to continue exactly where it stopped."""

    step: int = 0
    epoch: int = 0
    cursor: int = 0  # rows of the current epoch's permutation already consumed
    tokens: int = 0
    losses: list[float] = field(default_factory=list)  # per optimizer step: the loss curve
    config_digest: str = ""
    extra: dict = field(default_factory=dict)  # stage-specific scalars (PPO: the KL coefficient)


def _flatten(tree: dict, prefix: str, tensors: dict, plain: dict) -> None:
    import torch

    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            _flatten(v, key + "/", tensors, plain)
        elif isinstance(v, torch.Tensor):
            tensors[key] = v.detach().cpu().contiguous()
        else:
            plain[key] = v


def _unflatten(tensors: dict, plain: dict) -> dict:
    out: dict = {}
    for key, v in [*tensors.items(), *plain.items()]:
        node = out
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


def _save_dedup(tensors: dict, path: Path) -> dict[str, str]:
    """safetensors refuses shared storage (tied embeddings): store each storage once, return aliases."""
    from safetensors.torch import save_file

    seen: dict[tuple, str] = {}
    unique, aliases = {}, {}
    for k, t in tensors.items():
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if ident in seen:
            aliases[k] = seen[ident]
        else:
            seen[ident] = k
            unique[k] = t.detach().cpu().contiguous()
    save_file(unique, str(path))
    return aliases


def rng_state(device: str = "cpu"):
    """This process's RNG state as one uint8 tensor: the CPU generator's, then the CUDA device's
    when training on one (dropout masks and sampling on a GPU draw from the CUDA generator)."""
    import torch

    state = torch.get_rng_state()
    if str(device).startswith("cuda"):
        state = torch.cat([state, torch.cuda.get_rng_state(device)])
    return state


def set_rng_state(state, device: str = "cpu") -> None:
    """Restore what ``rng_state`` captured; a CPU-only state leaves the CUDA generator as seeded."""
    import torch

    n = torch.get_rng_state().numel()
    torch.set_rng_state(state[:n].clone())
    if len(state) > n and str(device).startswith("cuda"):
        torch.cuda.set_rng_state(state[n:].clone(), device)


def save_checkpoint(root: str | Path, model, optimizer, state: TrainerState, rng: list, keep: int) -> Path:
    """Write checkpoint ``step-<state.step>`` under ``root`` (call on every rank; rank 0 writes)."""
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd, optim_sd = get_state_dict(model, optimizer, options=opts)
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return Path(root) / f"step-{state.step:06d}"
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:06d}"
    tmp = root / f".tmp-step-{state.step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    aliases = _save_dedup(model_sd, tmp / "model.safetensors")
    opt_tensors, opt_plain = {}, {}
    _flatten(optim_sd, "", opt_tensors, opt_plain)
    from safetensors.torch import save_file

    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    save_file({f"rank{r}": t for r, t in enumerate(rng)}, str(tmp / "rng.safetensors"))
    meta = {"trainer": asdict(state), "model_aliases": aliases, "optimizer_plain": opt_plain}
    (tmp / STATE_FILE).write_text(json.dumps(meta))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(root: str | Path | None) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    if root is None or not Path(root).is_dir():
        return None
    done = sorted(p for p in Path(root).glob("step-*") if (p / STATE_FILE).exists())
    return done[-1] if done else None


def load_checkpoint(path: str | Path, model, optimizer) -> tuple[TrainerState, list]:
    """Restore model and optimizer in place; return the trainer state and the per-rank RNG states."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    path = Path(path)
    meta = json.loads((path / STATE_FILE).read_text())
    model_sd = load_file(str(path / "model.safetensors"))
    for alias, source in meta["model_aliases"].items():
        model_sd[alias] = model_sd[source]
    optim_sd = _unflatten(load_file(str(path / "optimizer.safetensors")), meta["optimizer_plain"])
    optim_sd.setdefault("state", {})
    for group in optim_sd["param_groups"]:  # JSON turned tuples into lists
        group.update({k: tuple(v) for k, v in group.items() if k == "betas"})
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd,
                   options=StateDictOptions(full_state_dict=True, strict=True))
    rng = load_file(str(path / "rng.safetensors"))
    return TrainerState(**meta["trainer"]), [rng[f"rank{r}"] for r in range(len(rng))]

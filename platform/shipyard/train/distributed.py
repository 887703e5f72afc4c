"""Process-group setup and model wrapping for torchrun-launched training (DDP or FSDP).

    torchrun --standalone --nproc_per_node 2 -m shipyard.train.launch <args.json>

Inside torchrun, WORLD_SIZE/RANK/LOCAL_RANK are set: we join the group (NCCL on CUDA, gloo on
CPU) and wrap the model. Outside it, everything is a single process and nothing is wrapped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @classmethod
    def from_env(cls) -> Dist:
        import torch

        world = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        device = f"cuda:{local_rank}" if cuda else "cpu"
        if world > 1:
            import torch.distributed as dist

            if cuda:
                torch.cuda.set_device(local_rank)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if cuda else "gloo")
            return cls(dist.get_rank(), world, local_rank, device)
        return cls(0, 1, 0, device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model, strategy: str):
        """DDP replicates the model and averages gradients; FSDP shards it per transformer block."""
        if self.world == 1:
            return model
        if strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.local_rank] if self.device.startswith("cuda") else None
            return DistributedDataParallel(model, device_ids=ids)
        from torch.distributed.fsdp import fully_shard

        block_names = set(getattr(model, "_no_split_modules", None) or [])
        for module in model.modules():
            if type(module).__name__ in block_names:
                fully_shard(module)
        fully_shard(model)
        return model

    def all_mean(self, t):
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t /= self.world
        return t

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

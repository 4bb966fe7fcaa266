"""One process or many: ``torchrun --nproc_per_node N -m train ...`` is detected from its environment.

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; with ``WORLD_SIZE`` > 1 each process
joins a process group (NCCL on GPUs, gloo on the CPU), trains its shard of every epoch
(``DistributedSampler``), and rank 0 alone writes files. Everything here is a no-op for
a single process, so the training loop reads the same either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

__all__ = ["Dist", "gather_rows", "pick_device", "init_distributed", "shutdown", "sync_flags"]

# Rank 0 may build the film cache while the others wait at a barrier: allow for it.
_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist
            dist.barrier()


def pick_device(choice: str, local_rank: int) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for, but torch sees no CUDA GPU (use --device cpu)")
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device: str = "auto") -> Dist:
    """Join torchrun's process group when there is one; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = pick_device(device, local_rank if world > 1 else 0)
    if world > 1:
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=_TIMEOUT)
    return Dist(rank=rank, world=world, local_rank=local_rank, device=dev)


def shutdown(d: Dist) -> None:
    if d.enabled:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()


def sync_flags(d: Dist, flags: list[bool]) -> list[bool]:
    """Rank 0's decisions (stop now, save now, ...) for every rank, so all take the same branch."""
    if not d.enabled:
        return flags
    import torch.distributed as dist
    t = torch.tensor([float(f) for f in flags], device=d.device)
    dist.broadcast(t, src=0)
    return [bool(v) for v in t.tolist()]


def gather_rows(d: Dist, index: torch.Tensor, *rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """All ranks' (index, rows...) in dataset order, each index once.

    ``DistributedSampler`` pads the last shard with repeats of the first items so every rank
    has as many; those duplicates are dropped here by keeping one row per dataset index.
    """
    if d.enabled:
        import torch.distributed as dist
        parts = []
        for t in (index, *rows):
            t = t.to(d.device)
            out = [torch.empty_like(t) for _ in range(d.world)]
            dist.all_gather(out, t)
            parts.append(torch.cat(out).cpu())
        index, rows = parts[0], tuple(parts[1:])
    order = torch.argsort(index, stable=True)
    index = index[order]
    keep = torch.ones_like(index, dtype=torch.bool)
    keep[1:] = index[1:] != index[:-1]
    return (index[keep], *(r[order][keep] for r in rows))

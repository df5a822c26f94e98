"""The same code on one process or many: `torchrun --nproc_per_node=N vtempo train …` just works.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; with them, `start` joins the process group (NCCL on
CUDA, gloo on CPU) and gives each rank its device. Without them everything degrades to one process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from vtempo.errors import UsageError, param
from vtempo.runtime import pick_device


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def start(device: str = "auto", timeout: timedelta | None = None) -> Ranks:
    """Join the process group when launched by torchrun (idempotent); pick this rank's device.

    `timeout` bounds every collective, barriers included (torch's default is 10 to 30 minutes);
    a run whose ranks may finish hours apart passes a longer one. A rank that dies does not
    leave the others waiting that long: torchrun stops them all."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    chosen = pick_device(device)
    if world <= 1:
        return Ranks(0, 1, chosen)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if chosen.type == "cuda":
        visible = torch.cuda.device_count()
        if local_rank >= visible:
            raise UsageError(f"rank {local_rank} of this node needs a GPU of its own, but {visible} are visible: "
                             f"start at most {visible} processes per node, or pass {param('device', 'cpu')}")
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        # torch.distributed.nn.functional binds `group=group.WORLD` as default arguments when it is first
        # imported (torchvision imports it through torch._dynamo). Imported after the group exists, it
        # keeps the group alive past `stop`, and gloo's threads then abort the exiting interpreter.
        import torch.distributed.nn.functional as _  # noqa: F401

        backend = "nccl" if chosen.type == "cuda" else "gloo"
        dist.init_process_group(backend, **({"timeout": timeout} if timeout is not None else {}))
    return Ranks(dist.get_rank(), dist.get_world_size(), chosen)


def local_world() -> int:
    """Processes that torchrun started on this machine (1 without torchrun): they share its cores."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def all_gather_objects(value: Any, ranks: Ranks) -> list[Any]:
    """Every rank's `value`, in rank order (just `[value]` on one process)."""
    if not ranks.distributed:
        return [value]
    gathered: list[Any] = [None] * ranks.world
    dist.all_gather_object(gathered, value)
    return gathered


def all_sum(values: list[float], ranks: Ranks) -> list[float]:
    if not ranks.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=ranks.device if ranks.device.type == "cuda" else "cpu")
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_true(flag: bool, ranks: Ranks) -> bool:
    """Whether `flag` holds on every rank (one small all-reduce under DDP)."""
    if not ranks.distributed:
        return flag
    return all_sum([float(not flag)], ranks)[0] == 0


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()


def stop() -> None:
    """Leave the process group, if this process joined one. A process that exits without this can abort
    while the interpreter shuts down (gloo's threads outlive it), failing a run that had finished."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

"""Several processes training one model with torch.distributed: started by `torchrun` or `accelerate launch`, which
set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. NCCL on CUDA devices, gloo on CPUs.

DDP keeps a full replica per process and averages gradients; FSDP (torch's `fully_shard`, FSDP2) shards every
parameter, the frozen base included, across the processes: for bases too large for one device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from peftlab.train.config import TrainConfigError
from peftlab.train.device import resolve_device

STRATEGIES = ("ddp", "fsdp")


@dataclasses.dataclass
class Parallel:
    """This process's place among the training processes (one process: rank 0 of 1, strategy "none")."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: str = "none"

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sum(self, value: float, device: torch.device) -> float:
        """`value` summed over the processes (float64, so that counts stay exact)."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return float(tensor)

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether any process raised `flag` (all processes get the same answer)."""
        return self.sum(float(flag), device) > 0

    def gather(self, value: Any) -> list[Any]:
        """Every process's `value`, on every process (in-memory objects between the run's own processes)."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @contextlib.contextmanager
    def gradient_sync(self, model: nn.Module, sync: bool) -> Iterator[None]:
        """Within this block, backward averages gradients over the processes only when `sync` (the last micro-batch
        of a step); the micro-batches before it accumulate locally."""
        if sync or not self.distributed:
            yield
        elif self.strategy == "ddp":
            with model.no_sync():
                yield
        else:
            model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)


def launched_processes() -> int:
    """WORLD_SIZE as torchrun / accelerate launch set it (1 when started as a plain process)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def start(strategy: str, device_name: str) -> tuple[Parallel, torch.device]:
    """Join the process group when launched on several processes; this process's Parallel and device.

    Under several processes the device is cuda:LOCAL_RANK when CUDA is available (or the named device type), and
    the backend NCCL there, gloo on CPUs.
    """
    if strategy not in STRATEGIES:
        raise TrainConfigError(f"parallel={strategy!r}: choose {' or '.join(STRATEGIES)}")
    world_size = launched_processes()
    if world_size == 1:
        return Parallel(), resolve_device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise TrainConfigError(f"several processes need CUDA devices or the CPU, not {device.type}; use --device "
                               "cpu or cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(minutes=30))
    return Parallel(rank=rank, world_size=world_size, local_rank=local_rank, strategy=strategy), device


def stop(parallel: Parallel) -> None:
    """Leave the process group (after the last collective)."""
    if parallel.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, parallel: Parallel, device: torch.device) -> nn.Module:
    """The model the processes train together: DDP around it, or FSDP2 shards of each block and of the rest.

    `model` is on `device` with the same weights on every process (the same seed built it; DDP also broadcasts
    rank 0's). Under FSDP the model is sharded in place and is returned itself.
    """
    if not parallel.distributed:
        return model
    if parallel.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    for block in shard_units(model):
        fully_shard(block)
    fully_shard(model)
    return model


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The blocks FSDP shards one by one: the classes a transformers model names in `_no_split_modules` (its
    decoder/encoder layers), else the members of every ModuleList."""
    base = getattr(model, "base_model", model)
    names = set(getattr(base, "_no_split_modules", None) or ())
    units = [m for m in base.modules() if type(m).__name__ in names]
    if units:
        return units
    return [m for lst in base.modules() if isinstance(lst, nn.ModuleList) for m in lst]


def reshard(model: nn.Module) -> None:
    """Put FSDP's parameters back into their shards (a forward without backward, such as an evaluation, leaves the
    root's unsharded), so that parameters and optimiser state name the same tensors."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def full_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """FSDP's sharded tensors (DTensor) gathered whole; call on every process, in the same order."""
    from torch.distributed.tensor import DTensor

    return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in tensors.items()}


def unwrapped(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (FSDP2 shards in place: no wrapper)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

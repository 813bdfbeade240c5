"""Where torch work runs: CUDA with bf16 autocast when present, CPU otherwise; DDP under torchrun."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceInfo:
    device: str  # "cuda" | "cpu"
    autocast_dtype: object | None  # torch.bfloat16 on CUDA, None on CPU
    rank: int
    world_size: int
    local_rank: int

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(prefer: str = "auto") -> DeviceInfo:
    """prefer: auto | cuda | cpu. Reads torchrun's RANK/WORLD_SIZE/LOCAL_RANK when set."""
    import torch

    use_cuda = torch.cuda.is_available() and prefer in ("auto", "cuda")
    if prefer == "cuda" and not use_cuda:
        raise RuntimeError("CUDA was asked for but torch sees no GPU")
    rank, world, local = (int(os.environ.get(name, default)) for name, default in
                          (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    device = f"cuda:{local}" if use_cuda else "cpu"
    return DeviceInfo(device, torch.bfloat16 if use_cuda else None, rank, world, local)


def init_distributed(info: DeviceInfo) -> None:
    """Join the process group torchrun set up: NCCL on GPUs, gloo on CPU."""
    import torch.distributed as dist

    if info.distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if info.device.startswith("cuda") else "gloo")


def autocast(info: DeviceInfo):
    import torch

    if info.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=info.autocast_dtype)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)

"""Process-group helpers for ``torchrun`` (DDP): NCCL on GPUs, gloo on CPU.

Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything here is a no-op
and the run is a single process with rank 0.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from unetzoo.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Rank, world size, local rank and the device this process trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


DEVICES = "cpu, cuda, cuda:N, mps"
_DEVICE_RE = re.compile(r"(cpu|mps|cuda)(?::(\d+))?")


def check_device(device: Any) -> str | None:
    """``device`` lower-cased if it names a device this tool runs on (``cpu``, ``cuda``,
    ``cuda:N``, ``mps``), None for None; anything else is one :class:`ConfigError`.

    Syntax only: whether that device exists here is :func:`resolve_device`'s job, so a
    configuration written on a GPU machine still reads on a laptop.
    """
    if device is None:
        return None
    text = str(device).strip().lower()
    m = _DEVICE_RE.fullmatch(text)
    if not isinstance(device, str) or m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise ConfigError(f"unknown device {device!r}; use one of {DEVICES}")
    return text


def resolve_device(device: Any) -> torch.device:
    """The :class:`torch.device` for ``device`` (None: CUDA when available, else CPU).

    Raises:
        ConfigError: an unknown name, or a device this machine does not have (e.g.
            ``cuda`` without a GPU), in one line instead of torch's traceback.
    """
    text = check_device(device)
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(text)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {text!r} asked for, but PyTorch sees no CUDA GPU on this machine; "
                "use --device cpu (or install a CUDA build of PyTorch)"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(
                f"device {text!r} does not exist: this machine has {count} CUDA GPU(s), "
                f"cuda:0..cuda:{count - 1}"
            )
    if dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ConfigError(f"device {text!r} is not available on this machine; use --device cpu")
    return dev


def setup(device: str | None = None) -> DistInfo:
    """Initialise the process group when launched by ``torchrun``; pick the device.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or None (CUDA when
            available); checked by :func:`resolve_device`.
    """
    dev = resolve_device(device)
    want_cuda = dev.type == "cuda"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        # Under torchrun each process takes its local rank's GPU; alone, the one named.
        index = local % torch.cuda.device_count() if world > 1 or dev.index is None else dev.index
        dev = torch.device("cuda", index)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def cleanup() -> None:
    """Destroy the process group if one was started."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean(value: float, info: DistInfo) -> float:
    """Mean of a float over all ranks (the value itself when not distributed)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size



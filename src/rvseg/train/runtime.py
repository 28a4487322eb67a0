"""Where and how a run computes: device, precision, and the distributed context.

Multi-GPU and multi-node training use PyTorch's own launcher: ``torchrun --nproc_per_node=N -m
rvseg train ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and every rank runs the same loop
(gloo on CPU, NCCL on CUDA).
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from rvseg.checks import check_choice
from rvseg.errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass(frozen=True)
class Runtime:
    """Where a run computes.

    Attributes:
        device: the training device of this process.
        precision: ``bf16`` | ``fp16`` | ``fp32``.
        rank, world_size: this process's place among the distributed processes.
        control_group: the process group of the loop's host-side votes and gathers (stop requests,
            checkpoint decisions, generator states): a gloo group beside an NCCL one, so that these
            never queue behind the GPU or make the host wait for it; None = the default group.
    """

    device: torch.device
    precision: str  # bf16 | fp16 | fp32
    rank: int = 0
    world_size: int = 1
    control_group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self, cache: bool = True):
        """Mixed precision for the forward pass. ``cache=False`` for CUDA-graph capture, which forbids
        autocast's cache of weight casts (tensors made outside the graph)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype, cache_enabled=cache)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """The loss scaler of fp16 training (a no-op otherwise)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    @property
    def channels_last(self) -> bool:
        return self.device.type == "cuda"


#: The device names a run takes.
DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_name(name: str) -> None:
    """Raise ConfigError for a device name that is none of auto, cpu, cuda, cuda:N (whether this
    machine has the device is :func:`resolve_device`'s question)."""
    if not isinstance(name, str) or not DEVICE_NAME.fullmatch(name):
        raise ConfigError(f"unknown device {name!r}; choose auto, cpu, cuda or cuda:N")


def check_precision_name(precision: str) -> None:
    check_choice(precision, PRECISIONS, "--precision")


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    check_device_name(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for, but PyTorch sees no CUDA device")
        return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    check_precision_name(precision)
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("fp16 needs a CUDA device (use bf16 or fp32 on the CPU)")
    return precision


def launched_world_size() -> int:
    """The number of processes torchrun launched (1 without torchrun)."""
    value = os.environ.get("WORLD_SIZE", "1")
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"the environment variable WORLD_SIZE must be a number of processes, not {value!r}")
    return int(value)


def setup_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """Resolve the device and precision, joining the process group when launched by torchrun."""
    world_size = launched_world_size()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    control_group = None
    if world_size > 1:
        if not dist.is_initialized():
            if resolved.type == "cuda":
                torch.cuda.set_device(resolved)
            dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
        if dist.get_backend() != "gloo":
            control_group = dist.new_group(backend="gloo")  # every rank creates it, in the same order
    return Runtime(resolved, resolve_precision(precision, resolved), rank, world_size, control_group)


def teardown_runtime(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """Sum a tensor over ranks (a no-op on one process)."""
    if runtime.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def any_rank(flag: bool, runtime: Runtime) -> bool:
    """True if ``flag`` holds on any rank, so that every rank takes the same branch (no deadlock).

    The vote is a CPU tensor on the control group: checked after every training step, it must not
    make the host wait for the GPU's queued work.
    """
    if not runtime.distributed:
        return flag
    vote = torch.tensor([float(flag)])
    dist.all_reduce(vote, op=dist.ReduceOp.SUM, group=runtime.control_group)
    return bool(vote.item() > 0)


def gather_objects(value: Any, runtime: Runtime) -> list:
    """``value`` of every rank, in rank order (``[value]`` on one process), over the control group."""
    if not runtime.distributed:
        return [value]
    gathered = [None] * runtime.world_size
    dist.all_gather_object(gathered, value, group=runtime.control_group)
    return gathered

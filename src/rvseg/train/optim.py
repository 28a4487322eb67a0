"""Registries of the optimizers and learning-rate schedules the study compared.

Schedules are stepped once per epoch, so ``metrics.csv`` shows each schedule's curve directly
(``step``: a staircase; ``cosine``: one half-cosine from ``lr`` to ``min_lr`` over the run; ``sgdr``:
cosine cycles restarting after ``sgdr_t0`` epochs, each cycle twice as long, as in Dang et al.).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, CosineAnnealingWarmRestarts, LRScheduler, StepLR

from rvseg.checks import pick
from rvseg.errors import ConfigError
from rvseg.train.config import TrainConfig

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda params, c, **kw: torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay, **kw),
    "adamw": lambda params, c, **kw: torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay, **kw),
    "sgd": lambda params, c, **kw: torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov,
                                                   weight_decay=c.weight_decay, **kw),
}

#: What each optimizer needs to run inside a CUDA graph (``--cuda-graph``): no host synchronisation
#: in its step. Adam's ``capturable`` keeps its step counters on the device; SGD's default (foreach)
#: path reads a tensor learning rate back to the host, its fused kernel takes it on the device.
GRAPH_SAFE: dict[str, dict] = {"adam": {"capturable": True}, "adamw": {"capturable": True}, "sgd": {"fused": True}}

SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer, TrainConfig], LRScheduler]] = {
    "none": lambda opt, c: ConstantLR(opt, factor=1.0, total_iters=0),
    "cosine": lambda opt, c: CosineAnnealingLR(opt, T_max=c.epochs, eta_min=c.min_lr),
    "step": lambda opt, c: StepLR(opt, step_size=c.step_size, gamma=c.gamma),
    "sgdr": lambda opt, c: CosineAnnealingWarmRestarts(opt, T_0=c.sgdr_t0, T_mult=2, eta_min=c.min_lr),
}


def build_optimizer(params: Iterable, config: TrainConfig, *, for_cuda_graph: bool = False) -> torch.optim.Optimizer:
    """``config.optimizer`` over ``params``; ``for_cuda_graph``: in its graph-safe form (:data:`GRAPH_SAFE`)."""
    if config.optimizer == "sgd" and config.nesterov and config.momentum <= 0:
        raise ConfigError("--nesterov needs a positive --momentum")
    build = pick(OPTIMIZERS, config.optimizer, "optimizer")
    return build(params, config, **(GRAPH_SAFE[config.optimizer] if for_cuda_graph else {}))


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> LRScheduler:
    return pick(SCHEDULERS, config.scheduler, "scheduler")(optimizer, config)


def sgdr_cycle_ends(t0: int, epochs: int) -> list[int]:
    """The epochs after which the ``sgdr`` cycles (t0, 2 t0, 4 t0, ... long) end, up to the first end at
    or after ``epochs``: t0, 3 t0, 7 t0, ... Each is its cycle's lowest learning rate, ``min_lr`` plus
    (1 - cos(pi / T)) / 2 of the way to ``lr`` for a cycle of T epochs (2e-6 for lr 1e-3, t0 50)."""
    ends = [t0]
    while ends[-1] < epochs:
        ends.append(2 * ends[-1] + t0)
    return ends


def is_sgdr_cycle_end(t0: int, epoch: int) -> bool:
    """Whether ``epoch`` (counted from 1) is the last of an ``sgdr`` cycle."""
    return sgdr_cycle_ends(t0, epoch)[-1] == epoch


def sgdr_mid_cycle_note(config) -> str | None:
    """A note when an ``sgdr`` run's last epoch falls inside a cycle: it then ends at a learning rate
    above ``min_lr``, or just after a restart."""
    if config.scheduler != "sgdr":
        return None
    ends = sgdr_cycle_ends(config.sgdr_t0, config.epochs)
    if config.epochs in ends:
        return None
    choices = ends[-2:]
    return (f"note: --scheduler sgdr with --sgdr-t0 {config.sgdr_t0}: cycles end after {', '.join(map(str, ends))} "
            f"epochs, so {config.epochs} epochs stop inside a cycle, above --min-lr (--epochs "
            f"{' or '.join(map(str, choices))} would end at a cycle's low point)")


def replan_schedule(scheduler: LRScheduler, epochs: int) -> bool:
    """Fit a schedule restored from ``last.pt`` to a run length changed on resume; True if it changed.

    Only ``cosine`` depends on the length: it then spans ``epochs``, and the learning rate moves to
    where that cosine stands at the epochs already done (the remaining epochs follow it exactly).
    """
    if not isinstance(scheduler, CosineAnnealingLR) or scheduler.T_max == epochs:
        return False
    scheduler.T_max = epochs
    done = scheduler.last_epoch
    lrs = [scheduler.eta_min + (base - scheduler.eta_min) * (1 + math.cos(math.pi * done / epochs)) / 2
           for base in scheduler.base_lrs]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs, strict=True):
        if isinstance(group["lr"], torch.Tensor):  # a device tensor under --cuda-graph
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
    scheduler._last_lr = lrs  # what get_last_lr() reports; torch keeps it in this attribute
    return True

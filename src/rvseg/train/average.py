"""An exponential moving average of a model's weights (``--ema DECAY``), validated and saved in their place.

Why: on a small validation set the Dice of single epochs swings by points from one epoch to the
next, most under SGDR restarts (``configs/rvsc-endo.yaml`` on an H200: 0.881 at its best epoch,
0.855 at its last). The average of the last few hundred steps' weights (Polyak averaging, as in
SWA and timm's ``ModelEma``) is a smoother model, so the final epoch is worth keeping and the
best-epoch choice depends less on validation noise.

- Averaged: the parameters and the floating buffers (BatchNorm running statistics), so the
  averaged network is normalised by statistics of its own era; integer buffers (BatchNorm's
  ``num_batches_tracked``) are copied.
- The ``t``-th update uses ``min(decay, (1 + t) / (10 + t))``: early averages are not held back
  by the random initial weights. With 13 steps per epoch (RVSC, batch 16), ``decay = 0.99`` spans
  about 100 steps, 8 epochs.
- The update never reads a value back to the host (one fused lerp over all tensors), so a
  training step replayed as a CUDA graph stays asynchronous.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """The moving average of ``source``'s weights, held in a copy of the network (``self.model``).

    ``source`` must keep its tensors (training updates them in place, as every optimizer and
    ``load_state_dict`` do): they are looked up once, here.
    """

    def __init__(self, source: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the EMA decay must be in (0, 1), not {decay}")
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(source).requires_grad_(False)
        averaged, tracked = self.model.state_dict(), source.state_dict()
        floating = [name for name, tensor in tracked.items() if tensor.is_floating_point()]
        counters = [name for name in tracked if name not in floating]
        self.averaged, self.tracked = [averaged[n] for n in floating], [tracked[n] for n in floating]
        self.counters, self.tracked_counters = [averaged[n] for n in counters], [tracked[n] for n in counters]

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the source's current weights (call after each optimizer step)."""
        self.updates += 1
        # lerp(avg, w, 1 - d) = d * avg + (1 - d) * w; _foreach_lerp_ is also what torch.optim.swa_utils uses.
        torch._foreach_lerp_(self.averaged, self.tracked, 1.0 - self.current_decay())
        if self.counters:
            torch._foreach_copy_(self.counters, self.tracked_counters)

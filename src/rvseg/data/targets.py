"""Training target encodings of filled masks: the study's ``filled``, ``outline`` and ``grey`` styles.

A prepared data set always stores filled 0/1 masks; its ``mask_style`` says how they are encoded as the
model's targets (:func:`encode_targets`), above which probability the model calls a pixel foreground
(:func:`decision_threshold`) and how its probabilities become scores of the filled region again
(:func:`filled_scores`), so that metrics, post-processing and outputs always see filled regions. Each
style is one :class:`TargetStyle` in :data:`MASK_STYLES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rvseg.checks import pick
from rvseg.data.outlines import fill_outlines

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TargetStyle:
    """One target encoding.

    Attributes:
        encode: float (B, L, H, W) filled 0/1 masks (torch) -> targets in [0, 1] of that shape.
        threshold: probability above which a pixel is called foreground.
        to_filled: float32 (..., h, w) probabilities (NumPy) -> scores of the filled region, foreground
            ``> 0.5``.
        outline: the targets are outlines, so a predicted outline is filled before it is scored.
    """

    encode: Callable
    threshold: float
    to_filled: Callable[[np.ndarray], np.ndarray]
    outline: bool = False


def outline_targets(masks: torch.Tensor) -> torch.Tensor:
    """1 on each region's 4-connected inner boundary, else 0."""
    import torch
    import torch.nn.functional as F

    # A foreground pixel is on the outline when any 4-neighbour is background:
    # erosion by a plus-shaped kernel is a min-pool over the cross.
    padded = F.pad(masks, (1, 1, 1, 1), value=0.0)
    eroded = torch.minimum(
        torch.minimum(padded[..., 1:-1, :-2], padded[..., 1:-1, 2:]),
        torch.minimum(padded[..., :-2, 1:-1], padded[..., 2:, 1:-1]),
    )
    return masks * (1.0 - torch.minimum(eroded, masks))


#: The grey style's region is 1 on a 0.5 background (the study's "filled on grey"); its threshold lies halfway.
GREY_THRESHOLD = 0.75

MASK_STYLES: dict[str, TargetStyle] = {
    "filled": TargetStyle(encode=lambda masks: masks, threshold=0.5, to_filled=lambda p: p),
    "outline": TargetStyle(encode=outline_targets, threshold=0.5,
                           to_filled=lambda p: fill_outlines(p > 0.5).astype(np.float32), outline=True),
    # 2 p - 1: the threshold 0.75 lands on 0.5, the background 0.5 on 0.
    "grey": TargetStyle(encode=lambda masks: 0.5 + 0.5 * masks, threshold=GREY_THRESHOLD,
                        to_filled=lambda p: np.clip(2.0 * p - 1.0, 0.0, 1.0).astype(np.float32)),
}


def target_style(name: str) -> TargetStyle:
    """The :class:`TargetStyle` named ``name`` (ConfigError listing the styles if unknown)."""
    return pick(MASK_STYLES, name, "mask style")


def encode_targets(masks: torch.Tensor, style: str) -> torch.Tensor:
    """float (B, L, H, W) filled 0/1 ``masks`` as the targets of ``style``, in [0, 1]."""
    return target_style(style).encode(masks)


def decision_threshold(style: str) -> float:
    """Probability above which a model trained on ``style`` calls a pixel foreground."""
    return target_style(style).threshold


def filled_scores(probabilities: np.ndarray, style: str) -> np.ndarray:
    """float32 scores of the filled region (foreground ``> 0.5``) from a ``style`` model's (..., h, w)
    probabilities: as they are (``filled``), ``2 p - 1`` (``grey``) or the outline ``p > 0.5``
    hole-filled, 0 or 1 (``outline``, :func:`~rvseg.data.outlines.fill_outlines`)."""
    return target_style(style).to_filled(np.asarray(probabilities, dtype=np.float32))

"""Figures of an evaluation: good and bad example predictions, the Dice histogram, overlays.

- :func:`draw_examples`: a grid of panels, each an image with the reference contour (solid) and the
  predicted contour (dashed, in another colour) of every label, as in the study's "good" and "bad" result figures.
- :func:`draw_dice_histogram`: the distribution of per-slice Dice, one histogram per label.
- :func:`overlay_image`: an RGB array of an image with the boundary pixels of masks coloured (fast,
  pixel-exact; used for the per-image overlays of ``rvseg predict``).

Contours are drawn at the 0.5 iso-line of each mask (``matplotlib``'s ``contour``), i.e. between the
pixel centres inside and outside, on the image drawn with pixel centres at integer coordinates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rvseg.data.inspect import LABEL_COLOURS
from rvseg.data.prepare import normalise_image
from rvseg.io import new_figure, save_figure
from rvseg.metrics import mask_boundary

#: Colours of the predicted contours of label 0, 1, ... in :func:`draw_examples` (references take
#: the label colours of ``rvseg inspect``: yellow, cyan, ...), so reference and prediction differ in
#: colour as well as line style.
PREDICTION_COLOURS = ("#ff3c3c", "#ff5dff", "#5dff5d", "#ffffff")


@dataclass
class ExamplePanel:
    """One panel of :func:`draw_examples`.

    Attributes:
        image: float (H, W) image (any intensity range; shown from its 1st to 99th percentile).
        predictions: label -> bool (H, W) predicted mask.
        references: label -> bool (H, W) reference mask (a label may be missing).
        title: text above the panel, e.g. ``"P13-0140 ED  Dice 0.91"``.
    """

    image: np.ndarray
    predictions: Mapping[str, np.ndarray]
    references: Mapping[str, np.ndarray] = field(default_factory=dict)
    title: str = ""


def draw_examples(panels: Sequence[ExamplePanel], path: str | Path, *, title: str = "", columns: int = 3) -> None:
    """Draw panels of images with reference (solid) and predicted (dashed) contours to a PNG.

    Args:
        panels: the examples, drawn row by row.
        path: the PNG to write (atomically).
        title: figure title.
        columns: panels per row.
    """
    from matplotlib.lines import Line2D

    labels = list(dict.fromkeys(label for panel in panels for label in (*panel.references, *panel.predictions)))
    colours = {label: LABEL_COLOURS[k % len(LABEL_COLOURS)] for k, label in enumerate(labels)}
    predicted_colours = {label: PREDICTION_COLOURS[k % len(PREDICTION_COLOURS)] for k, label in enumerate(labels)}
    columns = max(1, min(columns, len(panels)))
    rows = max(1, -(-len(panels) // columns))
    figure, axes = new_figure(rows, columns, figsize=(3.2 * columns, 3.4 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, panel in zip(axes.ravel(), panels, strict=False):
        ax.imshow(display_image(panel.image), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        for label, mask in panel.references.items():
            if mask.any():
                ax.contour(mask.astype(np.float32), levels=[0.5], colors=colours[label], linewidths=1.0)
        for label, mask in panel.predictions.items():
            if mask.any():
                ax.contour(mask.astype(np.float32), levels=[0.5], colors=predicted_colours[label], linewidths=1.0,
                           linestyles="dashed")
        ax.set_title(panel.title, fontsize=8)
    handles = []
    for label in labels:
        handles.append(Line2D([], [], color=colours[label], label=f"{label} reference"))
        handles.append(Line2D([], [], color=predicted_colours[label], linestyle="--", label=f"{label} predicted"))
    figure.legend(handles=handles, loc="lower center", ncol=max(1, len(handles)), fontsize=8, frameon=False)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0.05, 1, 0.97 if title else 1))
    save_figure(figure, path, dpi=110)


def draw_dice_histogram(dice: Mapping[str, Sequence[float]], path: str | Path, *, title: str = "") -> None:
    """Histogram of per-slice Dice in [0, 1] (20 bins), one panel per label, mean marked.

    Args:
        dice: label -> Dice values (NaN values are left out).
        path: the PNG to write (atomically).
        title: figure title.
    """
    figure, axes = new_figure(1, max(1, len(dice)), figsize=(4.0 * max(1, len(dice)), 3.2), squeeze=False)
    bins = np.linspace(0.0, 1.0, 21)
    for ax, (label, values) in zip(axes.ravel(), dice.items(), strict=False):
        values = np.asarray([v for v in values if v == v], dtype=np.float64)
        ax.hist(values, bins=bins, color="#4477aa", edgecolor="white")
        if values.size:
            ax.axvline(values.mean(), color="#cc3311", linestyle="--", label=f"mean {values.mean():.3f}")
            ax.legend(fontsize=8, loc="upper left")
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel(f"Dice ({label})")
        ax.set_ylabel("slices")
        ax.set_title(f"{label}: {values.size} slices", fontsize=9)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    save_figure(figure, path, dpi=110)


def overlay_image(image: np.ndarray, masks: Sequence[np.ndarray], colours: Sequence[str] = LABEL_COLOURS) -> np.ndarray:
    """The image in grey with the boundary pixels of each mask painted in its colour.

    Args:
        image: float (H, W) image, shown from its 1st to 99th percentile.
        masks: bool (H, W) masks, painted in order (a later mask's boundary wins where they touch).
        colours: matplotlib colour of mask ``k`` is ``colours[k % len(colours)]``.

    Returns:
        uint8 array of shape (H, W, 3).
    """
    from matplotlib.colors import to_rgb

    grey = np.round(display_image(image) * 255.0).astype(np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    for k, mask in enumerate(masks):
        colour = np.round(np.array(to_rgb(colours[k % len(colours)])) * 255.0).astype(np.uint8)
        rgb[mask_boundary(np.asarray(mask, dtype=bool))] = colour
    return rgb


def display_image(image: np.ndarray) -> np.ndarray:
    """Float32 (H, W) in [0, 1]: the image's 1st to 99th percentile stretched over the grey range."""
    return normalise_image(np.asarray(image, dtype=np.float32), "percentile", False)



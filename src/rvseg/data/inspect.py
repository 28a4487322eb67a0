"""``rvseg inspect``: what a study or a prepared data set holds, and a montage of images with their contours."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np

from rvseg.data.dataset import PreparedDataset, load_dataset
from rvseg.data.prepare import PrepareOptions, label_statistics, prepare
from rvseg.errors import ConfigError
from rvseg.io import new_figure, save_figure

LABEL_COLOURS = ("#ffd400", "#00c8ff", "#ff3c3c", "#5dff5d")


def load_study(src: str | Path, options: PrepareOptions | None = None) -> PreparedDataset:
    """Read a study in any layout exactly as :func:`prepare` does, keeping nothing on disk.

    The check before a prepare: the same matching of images to contours, filled masks, counts,
    notes and refusals (a bad file raises :class:`DataError` naming it, unless ``skip_bad``).
    The set is prepared in a temporary folder (so it needs that much free space there), loaded and
    the folder removed. Returns the prepared set in memory, its ``root`` the study folder.
    """
    with tempfile.TemporaryDirectory(prefix="rvseg-inspect-") as scratch:
        prepare(src, Path(scratch) / "dataset", options)
        dataset = load_dataset(Path(scratch) / "dataset")  # arrays are read into memory, not mapped
    return dataclasses.replace(dataset, root=Path(src))


def as_dataset(dataset: PreparedDataset | str | Path) -> PreparedDataset:
    """A prepared data set given as itself or as its folder."""
    return dataset if isinstance(dataset, PreparedDataset) else load_dataset(dataset)


def dataset_summary(dataset: PreparedDataset | str | Path) -> dict:
    """The prepare-time summary of a prepared data set (or its folder), with label statistics recomputed
    from the arrays on disk: the keys of :func:`~rvseg.data.prepare.prepare`'s summary, and ``labels``
    (per label: ``count``, ``mean_foreground_fraction``...), ``shape`` and ``content_hash``."""
    dataset = as_dataset(dataset)
    summary = dict(dataset.meta["summary"])
    extents = np.array([[int(r["height"]), int(r["width"])] for r in dataset.rows])
    summary["labels"] = label_statistics(dataset.labels, dataset.masks, dataset.present, extents)
    summary["shape"] = list(dataset.images.shape)
    summary["content_hash"] = dataset.meta["content_hash"]
    return summary


def draw_montage(dataset: PreparedDataset | str | Path, path: str | Path, n: int = 16, columns: int = 4) -> None:
    """Draw ``n`` samples spread evenly over a prepared data set (or its folder) to the image ``path``, each
    with every label's contour overlaid."""
    dataset = as_dataset(dataset)
    if n < 1:
        raise ConfigError(f"--n must be at least 1, not {n}")
    from matplotlib.lines import Line2D

    picks = np.unique(np.linspace(0, len(dataset) - 1, num=min(n, len(dataset))).round().astype(int))
    rows = int(np.ceil(len(picks) / columns))
    figure, axes = new_figure(rows, columns, figsize=(2.6 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, index in zip(axes.ravel(), picks, strict=False):
        row = dataset.rows[index]
        h, w = int(row["height"]), int(row["width"])
        ax.imshow(dataset.images[index, 0, :h, :w], cmap="gray")
        for k in range(len(dataset.labels)):
            if dataset.present[index, k] and dataset.masks[index, k].any():
                ax.contour(dataset.masks[index, k, :h, :w], levels=[0.5], colors=LABEL_COLOURS[k % 4],
                           linewidths=0.8)
        ax.set_title(f"{row['id']} ({row['phase']})", fontsize=8)
    handles = [Line2D([], [], color=LABEL_COLOURS[k % 4], label=label) for k, label in enumerate(dataset.labels)]
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    save_figure(figure, path, dpi=110)

"""Prepared data sets: the folder ``rvseg prepare`` writes, and loading it back.

A prepared data set is a folder with:

- ``images.npy``: float32 (N, C, H, W), normalised intensities (C = 1, or 3 for the RGB variant).
- ``masks.npy``: uint8 (N, L, H, W), FILLED 0/1 masks, one channel per label in ``dataset.json``.
- ``present.npy``: bool (N, L), whether a sample carries that label at all (Sunnybrook has epi on
  only some images; an absent label is not an empty one).
- ``samples.csv``: one row per sample (``id, patient, phase, slice, frame, height, width, ...``).
- ``dataset.json``: labels, source format, options, counts, the read report and a content hash.

When samples of different sizes are stacked (no ``--size``), each is padded at the bottom/right
to the largest size; ``height``/``width`` in ``samples.csv`` give the real extent.

Targets are always stored filled; the study's other target encodings (``outline``, ``grey``) are
derived from them by :func:`rvseg.data.targets.encode_targets`, so metrics are always computed on filled
masks.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rvseg.checks import as_path, check_exists
from rvseg.errors import DataError

ARRAY_FILES = ("images.npy", "masks.npy", "present.npy")
#: What every consumer of a prepared data set reads from ``dataset.json`` and ``samples.csv``.
META_KEYS = ("labels", "options", "content_hash", "summary")
SAMPLE_COLUMNS = ("id", "patient", "phase", "slice", "frame", "spacing_mm", "spacing_col_mm", "height", "width",
                  "orig_height", "orig_width", "slice_location")


@dataclass
class PreparedDataset:
    """A prepared data set in memory.

    Attributes:
        root: the folder it was loaded from.
        images: float32 (N, C, H, W).
        masks: uint8 (N, L, H, W), filled 0/1.
        present: bool (N, L).
        rows: the ``samples.csv`` rows (text, as read; empty where unknown): ``id``, ``patient``,
            ``phase``, ``slice``, ``frame``, ``spacing_mm``, ``height``, ``width`` ... (:data:`SAMPLE_COLUMNS`).
        meta: the ``dataset.json`` content.
    """

    root: Path
    images: np.ndarray
    masks: np.ndarray
    present: np.ndarray
    rows: list[dict[str, str]]
    meta: dict

    def __repr__(self) -> str:  # the arrays and rows would print as megabytes of text
        return (f"PreparedDataset({str(self.root)!r}: {len(self)} samples of {len(self.patients)} patients, "
                f"images {self.images.shape}, labels {self.labels}, mask style {self.mask_style!r})")

    @property
    def labels(self) -> list[str]:
        """The L label names, in the order of the masks' channels."""
        return list(self.meta["labels"])

    @property
    def mask_style(self) -> str:
        """How training targets are encoded: ``filled``, ``outline`` or ``grey``."""
        return self.meta["options"].get("mask_style", "filled")

    @property
    def patients(self) -> list[str]:
        """The patient ids, sorted."""
        return sorted({row["patient"] for row in self.rows})

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> list[str]:
        """One ``samples.csv`` column, as text (e.g. ``column("phase")``)."""
        return [row[name] for row in self.rows]

    def indices_of_patients(self, patients: list[str] | set[str]) -> np.ndarray:
        """int64 indices of the samples of ``patients``, in sample order."""
        wanted = set(patients)
        return np.array([i for i, row in enumerate(self.rows) if row["patient"] in wanted], dtype=np.int64)

    def label_indices(self, targets: list[str]) -> list[int]:
        """Channel indices of the requested target labels (ConfigError-like DataError if unknown)."""
        missing = [t for t in targets if t not in self.labels]
        if missing:
            raise DataError(f"label(s) {', '.join(missing)} not in this data set (it has {', '.join(self.labels)})",
                            self.root)
        return [self.labels.index(t) for t in targets]

    def extent(self, index: int) -> tuple[int, int]:
        """(height, width) of a sample inside its padded array."""
        row = self.rows[index]
        return int(row["height"]), int(row["width"])

    def spacing(self, index: int) -> tuple[float, float] | None:
        """(row, column) pixel spacing in mm of a sample, or None where the source gave none."""
        row = self.rows[index]
        if not row.get("spacing_mm"):
            return None
        return float(row["spacing_mm"]), float(row["spacing_col_mm"])

    def scale(self, indices: Sequence[int]) -> dict:
        """How large the anatomy of the samples ``indices`` is in pixels of their prepared images:
        ``mm_per_pixel``, the median row spacing (None unless most samples give one), and ``rows``, the
        median image height (what that size follows when no spacing is known and the fields of view
        are alike)."""
        spacings = [spacing[0] for spacing in map(self.spacing, indices) if spacing]
        return {"mm_per_pixel": float(np.median(spacings)) if 2 * len(spacings) > len(indices) else None,
                "rows": float(np.median([self.extent(index)[0] for index in indices]))}


def is_prepared(root: str | Path) -> bool:
    """Whether ``root`` holds a prepared data set (rather than a study to read)."""
    return (Path(root) / "dataset.json").is_file()


def load_dataset(root: str | Path) -> PreparedDataset:
    """Load a prepared data set (a folder written by ``rvseg prepare`` / :func:`rvseg.api.prepare`).

    Raises:
        DataError: ``root`` holds no prepared set, or a damaged one.
    """
    root = as_path(root, "dataset")
    meta_path = root / "dataset.json"
    check_exists(root)
    if not is_prepared(root):
        raise DataError("not a prepared data set (no dataset.json); run `rvseg prepare` (rvseg.api.prepare) first",
                        root)
    try:
        meta = json.loads(meta_path.read_text())
        images = np.load(root / "images.npy")
        masks = np.load(root / "masks.npy")
        present = np.load(root / "present.npy")
        with open(root / "samples.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise DataError(f"prepared data set is damaged ({exc})", root) from None
    problem = _inconsistency(meta, images, masks, present, rows)
    if problem:
        raise DataError(f"prepared data set is damaged ({problem}); prepare it again", root)
    return PreparedDataset(root, images, masks, present, rows, meta)


def _inconsistency(meta, images: np.ndarray, masks: np.ndarray, present: np.ndarray, rows: list[dict]) -> str:
    """What is wrong with the loaded parts of a prepared data set, or ``""``."""
    if not isinstance(meta, dict) or any(key not in meta for key in META_KEYS):
        return f"dataset.json lacks one of {', '.join(META_KEYS)}"
    missing = [column for column in SAMPLE_COLUMNS if rows and column not in rows[0]]
    if missing:
        return f"samples.csv lacks the column(s) {', '.join(missing)}"
    n_labels = len(meta["labels"])
    if images.ndim != 4 or masks.ndim != 4 or masks.shape[1] != n_labels or present.shape[1:] != (n_labels,):
        return (f"array shapes {images.shape}, {masks.shape}, {present.shape} do not fit {n_labels} label(s) "
                "(N, C, H, W), (N, L, H, W), (N, L)")
    if not (len(images) == len(masks) == len(present) == len(rows)):
        return "array and samples.csv lengths differ"
    return ""



"""``rvseg prepare``: read any layout, normalise, optionally resize, and write a prepared data set.

The folder is written to a temporary sibling and renamed into place at the end, so an interrupted
or failed ``prepare`` never leaves a half-written data set behind.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from skimage.exposure import equalize_adapthist
from skimage.transform import resize

from rvseg import __version__
from rvseg.checks import as_path, check_choice, check_type, is_real_number
from rvseg.data.dataset import ARRAY_FILES
from rvseg.data.formats import read_dataset
from rvseg.data.sample import PHASES, ReadReport, Sample
from rvseg.data.targets import MASK_STYLES
from rvseg.errors import ConfigError, DataError
from rvseg.io import atomic_folder, check_output_folder, checksum, csv_cell, write_csv, write_json

NORMALISATIONS = ("percentile", "zscore", "none")


@dataclass
class PrepareOptions:
    """Options of ``rvseg prepare`` (saved in ``dataset.json``).

    Attributes:
        format: layout name or ``auto``.
        size: (H, W) to resize every slice to, or None to keep native resolution.
        channels: 1 (grayscale) or 3 (the study's RGB variant: the gray image repeated).
        mask_style: how training targets are encoded: ``filled``, ``outline`` or ``grey``.
        normalize: ``percentile`` (1st-99th percentile of each image mapped to [0, 1], clipped),
            ``zscore`` (per image), or ``none``.
        clahe: contrast-limited adaptive histogram equalisation. It needs an image in [0, 1], so it
            runs on the percentile-rescaled image whatever ``normalize`` says; ``zscore`` then
            standardises the equalised image, and ``none`` keeps it in [0, 1].
        skip_bad: record bad files and go on instead of stopping.
        labels: label names for layouts whose contours are not RV (Sunnybrook), e.g. ("endo", "epi").
    """

    format: str = "auto"
    size: tuple[int, int] | None = None
    channels: int = 1
    mask_style: str = "filled"
    normalize: str = "percentile"
    clahe: bool = False
    skip_bad: bool = False
    labels: tuple[str, ...] | None = None

    def validate(self) -> None:
        if self.channels not in (1, 3):
            raise ConfigError(f"--channels must be 1 or 3, not {self.channels}")
        check_choice(self.mask_style, tuple(MASK_STYLES), "--mask-style")
        check_choice(self.normalize, NORMALISATIONS, "--normalize")
        if self.size is not None:
            if not (np.ndim(self.size) == 1 and len(self.size) == 2 and all(
                    is_real_number(v) and float(v).is_integer() and v >= 8 for v in self.size)):
                raise ConfigError(f"--size needs two whole numbers of at least 8 (H W), not {self.size!r}")
            self.size = (int(self.size[0]), int(self.size[1]))  # as dataset.json records it
        if self.labels is not None and not (isinstance(self.labels, (tuple, list)) and all(
                isinstance(label, str) and label for label in self.labels)):
            raise ConfigError(f"labels must be a list of names, e.g. ('endo', 'epi'), not {self.labels!r}")


def normalise_image(image: np.ndarray, method: str, clahe: bool) -> np.ndarray:
    """Normalise one float (H, W) image; returns float32 (H, W)."""
    image = image.astype(np.float32)
    if method == "percentile" or clahe:
        low, high = np.percentile(image, [1.0, 99.0])
        image = np.clip((image - low) / max(high - low, 1e-6), 0.0, 1.0)
        if clahe:
            image = equalize_adapthist(image, clip_limit=0.01).astype(np.float32)
    if method == "zscore":
        image = (image - image.mean()) / max(float(image.std()), 1e-6)
    return image.astype(np.float32)


def resize_sample(image: np.ndarray, masks: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize a (H, W) image bilinearly and (L, H, W) masks by nearest neighbour."""
    image = resize(image, size, order=1, preserve_range=True, anti_aliasing=True).astype(np.float32)
    masks = np.stack([resize(m, size, order=0, preserve_range=True, anti_aliasing=False) for m in masks])
    return image, masks.astype(np.uint8)


def label_statistics(
    labels: tuple[str, ...] | list[str], masks: np.ndarray, present: np.ndarray, extents: np.ndarray
) -> dict[str, dict]:
    """Per label: ``count`` (samples carrying it) and ``mean_foreground_fraction`` (of their real extent).

    Args:
        labels: the L label names.
        masks: uint8 (N, L, H, W) filled masks (stacking padding is background).
        present: bool (N, L).
        extents: int (N, 2), the real (height, width) of each sample.
    """
    pixels = extents[:, 0] * extents[:, 1]
    statistics = {}
    for k, name in enumerate(labels):
        have = present[:, k]
        foreground = masks[have, k].sum(axis=(1, 2), dtype=np.int64)  # reshape(0, -1) fails for no sample
        statistics[name] = {
            "count": int(have.sum()),
            "mean_foreground_fraction": float((foreground / pixels[have]).mean()) if have.any() else 0.0,
        }
    return statistics


def summarize_report(report: ReadReport, masks: np.ndarray, present: np.ndarray, extents: np.ndarray) -> dict:
    """The JSON summary printed by ``prepare --json`` and ``inspect --json``."""
    labels = label_statistics(report.labels, masks, present, extents)
    phases = {phase: 0 for phase in PHASES}
    for sample in report.samples:
        phases[sample.phase] += 1
    return {
        "format": report.format,
        "n_samples": len(report.samples),
        "n_patients": len(report.patients),
        "labels": labels,
        "phases": phases,
        "unmatched": {"images": report.unmatched_images, "contours": report.unmatched_contours},
        "unfillable": report.unfillable,
        "skipped": report.skipped,
        "notes": list(dict.fromkeys(report.notes)),  # a note of many files once
    }


def stack_samples(samples: list[Sample], labels: tuple[str, ...], options: PrepareOptions):
    """Normalise, resize and stack samples.

    Returns:
        images float32 (N, C, H, W), masks uint8 (N, L, H, W), present bool (N, L),
        extents int (N, 2) (real H, W of each sample inside the stack), spacings (N, 2) float (NaN
        where unknown).
    """
    # The stacks are allocated first and filled sample by sample: one copy of the set beside the
    # samples' own pixels, not a list of normalised images and then the stacks as well.
    extents = np.array([options.size if options.size is not None else sample.image.shape for sample in samples],
                       dtype=np.int64).reshape(len(samples), 2)
    height, width = extents.max(axis=0)
    image_stack = np.zeros((len(samples), options.channels, height, width), dtype=np.float32)
    mask_stack = np.zeros((len(samples), len(labels), height, width), dtype=np.uint8)
    present = np.zeros((len(samples), len(labels)), dtype=bool)
    spacings = np.full((len(samples), 2), np.nan)
    for i, sample in enumerate(samples):
        image = normalise_image(sample.image, options.normalize, options.clahe)
        stacked = np.zeros((len(labels), *image.shape), dtype=np.uint8)
        for k, label in enumerate(labels):
            if label in sample.masks:
                stacked[k] = sample.masks[label]
                present[i, k] = True
        if sample.spacing_mm:
            spacings[i] = sample.spacing_mm
        if options.size is not None and tuple(image.shape) != tuple(options.size):
            spacings[i] *= np.array(image.shape) / np.array(options.size)
            image, stacked = resize_sample(image, stacked, options.size)
        h, w = image.shape
        image_stack[i, :, :h, :w] = image
        mask_stack[i, :, :h, :w] = stacked
    return image_stack, mask_stack, present, extents, spacings


def content_hash(folder: Path, rows: list[dict]) -> str:
    """What identifies a prepared set: its arrays and its sample table, less the folder its sources
    were read from, so that a copy of a study prepared elsewhere (another machine, another mount) is
    the same data to a sweep or a resumed run."""
    columns = [key for key in (rows[0] if rows else {}) if key != "source_image"]
    table = json.dumps([columns, *([csv_cell(row[key]) for key in columns] for row in rows)])
    return checksum(*(folder / name for name in ARRAY_FILES), table.encode())


def sample_rows(samples: list[Sample], labels, masks, present, extents, spacings) -> list[dict]:
    """The ``samples.csv`` rows; None and NaN become empty cells when written (:func:`rvseg.io.csv_cell`)."""
    rows = []
    for i, s in enumerate(samples):
        row = {
            "id": s.id,
            "patient": s.patient,
            "phase": s.phase,
            "slice": s.slice,
            "frame": s.frame,
            "spacing_mm": float(spacings[i, 0]),
            "spacing_col_mm": float(spacings[i, 1]),
            "height": int(extents[i, 0]),
            "width": int(extents[i, 1]),
            "orig_height": s.image.shape[0],
            "orig_width": s.image.shape[1],
            "slice_location": s.slice_location,
            "position_mm": s.position_mm,
            "slice_thickness_mm": s.slice_thickness_mm,
            "source_image": s.sources.get("image", ""),
        }
        for k, label in enumerate(labels):
            row[f"has_{label}"] = int(present[i, k])
            row[f"area_px_{label}"] = int(masks[i, k].sum())
        rows.append(row)
    return rows


def prepare(src: str | Path, out: str | Path, options: PrepareOptions | None = None, force: bool = False) -> dict:
    """Read ``src`` (any supported layout) and write a prepared data set to ``out``.

    Args:
        src: the study folder (its layout detected unless ``options.format`` names one).
        out: the folder to write (created; it must not exist or be empty, unless ``force``).
        options: how samples are normalised, resized and encoded (:class:`PrepareOptions`).
        force: replace a non-empty ``out``.

    Returns:
        the summary (also stored in ``dataset.json`` under ``summary``): ``format``, ``n_samples``,
        ``n_patients``, ``labels`` (per label ``count`` and ``mean_foreground_fraction``), ``phases``
        (ED / ES / unknown counts), ``unmatched`` (``images`` without contours, ``contours`` without
        images), ``unfillable`` (contours that give no region), ``skipped`` (``{"path", "reason"}`` of
        bad files, with ``skip_bad``) and ``notes``.

    Raises:
        DataError: ``src`` is missing, in no known layout, holds a bad file (without ``skip_bad``) or no
            annotated sample; ``out`` is not empty.
        ConfigError: an invalid option.
    """
    options = options or PrepareOptions()
    check_type(options, PrepareOptions, "options", " (e.g. PrepareOptions(size=(128, 128)))")
    options.validate()
    src, out = as_path(src, "src"), as_path(out, "out")
    check_output_folder(out, force, inputs=[src])
    report = read_dataset(src, options.format, skip_bad=options.skip_bad, labels=options.labels)
    if not report.samples:
        raise DataError(f"no annotated samples found in this {report.format} folder", src)
    return write_prepared(report, out, options, source=src)


def write_prepared(report: ReadReport, out: str | Path, options: PrepareOptions, source: str | Path = "") -> dict:
    """Write the samples of a :class:`ReadReport` as a prepared data set (atomically)."""
    out = Path(out)
    samples = sorted(report.samples, key=lambda s: s.id)
    images, masks, present, extents, spacings = stack_samples(samples, report.labels, options)
    summary = summarize_report(report, masks, present, extents)
    rows = sample_rows(samples, report.labels, masks, present, extents, spacings)

    with atomic_folder(out) as tmp:
        np.save(tmp / "images.npy", images)
        np.save(tmp / "masks.npy", masks)
        np.save(tmp / "present.npy", present)
        write_csv(tmp / "samples.csv", rows)
        meta = {
            "rvseg_version": __version__,
            "source": str(Path(source).resolve()) if source else "",
            "format": report.format,
            "labels": list(report.labels),
            "options": {**asdict(options), "format": report.format},
            "shape": list(images.shape),
            "counts": {"n_samples": summary["n_samples"], "n_patients": summary["n_patients"],
                       "phases": summary["phases"]},
            "content_hash": content_hash(tmp, rows),
            "summary": summary,
        }
        write_json(tmp / "dataset.json", meta)
    return summary

"""The one in-memory form every reader produces.

A :class:`Sample` is one 2D short-axis slice at one cardiac phase, with its named binary masks.
A :class:`ReadReport` is what a reader returns for a whole folder: the samples plus everything it
noticed on the way (images without contours, contours without images, outlines it could not fill,
files skipped with ``skip_bad``), so that nothing is ever dropped silently.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rvseg.errors import DataError
from rvseg.io import checksum

PHASES = ("ED", "ES", "unknown")
#: Fraction of the i-contour mask allowed outside the o-contour mask before a note is added:
#: expert contours drawn on the same image touch at most along a few boundary pixels.
NESTING_TOLERANCE = 0.01


@dataclass
class Sample:
    """One annotated 2D slice.

    Attributes:
        id: unique within a data set, e.g. ``"P09-0020"``.
        patient: patient id, e.g. ``"P09"``; splits never put one patient in two splits.
        image: float32 array of shape (H, W), raw intensities (no normalisation).
        masks: label name -> bool array of shape (H, W), e.g. ``{"endo": ..., "epi": ...}``.
        spacing_mm: (row spacing, column spacing) in mm, or None when the source has none.
        slice: slice id within the patient (a string, e.g. the rounded slice location or index).
        frame: frame (time point) number within the cine, or None.
        phase: ``"ED"``, ``"ES"`` or ``"unknown"``.
        slice_location: the slice's location in mm as the source gives it (DICOM SliceLocation), when
            known: it orders and names slices, but some scanners (GE) measure it along the table axis.
        position_mm: the slice plane's position along its normal in mm (ImagePositionPatient projected
            on the plane normal), when known: the distances between slices that volumes need.
        slice_thickness_mm: slice thickness (or spacing between slices) in mm, when known.
        sources: what was read: ``"image"`` and each label name -> file path.
    """

    id: str
    patient: str
    image: np.ndarray
    masks: dict[str, np.ndarray]
    spacing_mm: tuple[float, float] | None = None
    slice: str = ""
    frame: int | None = None
    phase: str = "unknown"
    slice_location: float | None = None
    position_mm: float | None = None
    slice_thickness_mm: float | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, not {self.phase!r}")
        for label, mask in self.masks.items():
            if mask.shape != self.image.shape:
                raise DataError(
                    f"mask '{label}' has shape {mask.shape} but the image has {self.image.shape}",
                    self.sources.get(label, self.id),
                )

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape  # type: ignore[return-value]


@dataclass
class ReadReport:
    """Everything a reader found in a folder.

    Attributes:
        format: the layout read (``rvsc``, ``sunnybrook``, ``pngpairs``, ``acdc``).
        labels: the label names every sample may carry, in output-channel order.
        samples: the annotated samples, sorted by id.
        unmatched_images: images with no contour (not an error: most cine frames are unlabelled).
        unmatched_contours: contour files with no image to go with.
        unfillable: contour maps / outlines that could not be turned into a filled mask.
        skipped: ``{"path": ..., "reason": ...}`` for each bad file passed over with ``skip_bad``.
        notes: other findings worth reporting (e.g. an o-contour without its i-contour).
    """

    format: str
    labels: tuple[str, ...]
    samples: list[Sample] = field(default_factory=list)
    unmatched_images: list[str] = field(default_factory=list)
    unmatched_contours: list[str] = field(default_factory=list)
    unfillable: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def bad_file(self, path: str | Path, reason: str, skip_bad: bool) -> None:
        """Record a bad file when ``skip_bad``; otherwise stop with a :class:`DataError`."""
        if not skip_bad:
            raise DataError(reason, path)
        self.skipped.append({"path": str(path), "reason": reason})

    @property
    def patients(self) -> list[str]:
        return sorted({s.patient for s in self.samples})


def note_unnested(sample_id: str, masks: dict[str, np.ndarray], inner: str, outer: str, report: ReadReport) -> None:
    """Add a note when more than :data:`NESTING_TOLERANCE` of the ``inner`` mask lies outside ``outer``.

    An endocardium outside its epicardium means misaligned or swapped contours; the sample is kept
    (the file is readable) but the user should know.
    """
    if inner not in masks or outer not in masks:
        return
    outside = int(np.count_nonzero(masks[inner] & ~masks[outer]))
    total = int(np.count_nonzero(masks[inner]))
    if outside > NESTING_TOLERANCE * total:
        report.notes.append(
            f"{sample_id}: {outside} of {total} '{inner}' pixels lie outside '{outer}' (the contours do not nest)"
        )


def note_copied_annotations(report: ReadReport) -> None:
    """Add a note when annotation files of different images are byte for byte the same.

    No expert draws a contour twice alike, so such a file is a copy of another image's annotation (in
    one Sunnybrook download, SC-HF-I-6's o-contours are SC-HF-I-1's), and its masks are that image's.
    Files giving an empty mask (blank contour maps, alike without being copies) are left out. The
    samples are kept, as every file reads; the user should check the data.
    """
    images_by_path: dict[str, set[str]] = defaultdict(set)
    for sample in report.samples:
        for label, path in sample.sources.items():
            if label in sample.masks and sample.masks[label].any():
                images_by_path[path].add(sample.id)
    by_content: dict[str, list[str]] = defaultdict(list)
    for path in sorted(images_by_path):
        if Path(path).is_file():
            by_content[checksum(path)].append(path)
    copies = sorted(paths for paths in by_content.values()
                    if len(set().union(*(images_by_path[path] for path in paths))) > 1 and len(paths) > 1)
    if copies:
        report.notes.append(f"{len(copies)} annotation file(s) are byte for byte another image's (first: "
                            f"{' and '.join(copies[0])}): one of each is a copy, whose masks are the other image's; "
                            "check the data")

"""Reading single-frame DICOM images with the metadata the readers and prediction need.

Every problem with a file (not DICOM, corrupt, no pixel data, malformed geometry tags) is raised as
a :class:`~rvseg.errors.DataError` naming the file; pydicom's own exceptions never leak out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from rvseg.errors import DataError

#: A DICOM Part 10 file starts with a 128-byte preamble followed by these four bytes.
DICOM_MAGIC = b"DICM"
DICOM_PREAMBLE_BYTES = 128


@dataclass(frozen=True)
class DicomImage:
    """One 2D DICOM image.

    Attributes:
        pixels: float32 array of shape (H, W), stored values with RescaleSlope/Intercept applied.
        spacing_mm: (row spacing, column spacing) in mm from PixelSpacing, or None.
        trigger_time: ms after the R wave (TriggerTime), or None.
        slice_location: position along the slice normal in mm: SliceLocation, else
            ImagePositionPatient projected on the normal of ImageOrientationPatient, else None.
        slice_thickness_mm: SpacingBetweenSlices, else SliceThickness, else None.
        instance_number: InstanceNumber, or None.
        series_uid: SeriesInstanceUID, or None.
        path: the file read.
    """

    pixels: np.ndarray
    spacing_mm: tuple[float, float] | None
    trigger_time: float | None
    slice_location: float | None
    slice_thickness_mm: float | None
    instance_number: int | None
    series_uid: str | None
    path: Path

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the image."""
        return self.pixels.shape  # type: ignore[return-value]


def is_dicom(path: str | Path) -> bool:
    """Whether ``path`` is a file with the DICOM Part 10 preamble (reads 132 bytes only)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(DICOM_PREAMBLE_BYTES + len(DICOM_MAGIC))
    except OSError:
        return False
    return head[DICOM_PREAMBLE_BYTES:] == DICOM_MAGIC


def read_dicom(path: str | Path) -> DicomImage:
    """Read a single-frame greyscale DICOM image and its geometry/timing metadata.

    Args:
        path: a DICOM Part 10 file (with the 128-byte preamble and ``DICM``).

    Returns:
        the :class:`DicomImage`, ``pixels`` float32 of shape (H, W).

    Raises:
        DataError: the file is missing, not DICOM, corrupt, holds no (or undecodable) pixel data,
            is not a single 2D greyscale frame, or has a malformed geometry/timing tag.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("DICOM file does not exist", path)
    # Scanner exports often carry slightly invalid values (e.g. UIDs with leading zeros); they are
    # harmless here, and validating them would flood the user with pydicom warnings.
    with pydicom.config.disable_value_validation():
        dataset = _read_dataset(path)
        pixels = _read_pixels(dataset, path)
        return DicomImage(
            pixels=pixels,
            spacing_mm=_pixel_spacing(dataset, path),
            trigger_time=_optional_float(dataset, "TriggerTime", path),
            slice_location=_slice_location(dataset, path),
            slice_thickness_mm=_slice_thickness(dataset, path),
            instance_number=_instance_number(dataset, path),
            series_uid=_optional_str(dataset, "SeriesInstanceUID"),
            path=path,
        )


def order_series(images: Iterable[DicomImage]) -> list[DicomImage]:
    """Sort images by (slice_location, trigger_time, instance_number); unknown values sort last."""

    def missing_last(value: float | None) -> tuple[bool, float]:
        return (value is None, 0.0 if value is None else float(value))

    return sorted(
        images,
        key=lambda image: (
            missing_last(image.slice_location),
            missing_last(image.trigger_time),
            missing_last(image.instance_number),
        ),
    )


def _read_dataset(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        raise DataError("not a DICOM file (no 'DICM' marker after the 128-byte preamble)", path) from None
    # pydicom raises a wide variety of exceptions on damaged files (struct.error, EOFError,
    # ValueError, KeyError, ...); all of them mean the same thing to the user.
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"corrupt DICOM file ({exc.__class__.__name__}: {exc})", path) from None


def _read_pixels(dataset: Dataset, path: Path) -> np.ndarray:
    if "PixelData" not in dataset:
        raise DataError("DICOM file holds no pixel data (not an image, or the file is truncated)", path)
    try:
        stored = dataset.pixel_array
    except Exception as exc:  # noqa: BLE001 - any decoding failure (truncated data, codec missing)
        raise DataError(f"cannot decode the DICOM pixel data ({exc.__class__.__name__}: {exc})", path) from None
    if stored.ndim != 2:
        raise DataError(
            f"expected one 2D greyscale frame, the pixel data has shape {tuple(stored.shape)}", path
        )
    slope = _optional_float(dataset, "RescaleSlope", path)
    intercept = _optional_float(dataset, "RescaleIntercept", path)
    pixels = stored.astype(np.float32)
    if slope is not None:
        pixels *= np.float32(slope)
    if intercept is not None:
        pixels += np.float32(intercept)
    return pixels


def _element_value(dataset: Dataset, keyword: str):
    """The tag's value, or None when the tag is absent or empty."""
    value = dataset.get(keyword)
    if value is None or value == "":
        return None
    return value


def _optional_float(dataset: Dataset, keyword: str, path: Path) -> float | None:
    value = _element_value(dataset, keyword)
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"tag {keyword} holds {value!r}, not a number", path) from None
    if not math.isfinite(number):
        raise DataError(f"tag {keyword} holds a non-finite value ({value!r})", path)
    return number


def _float_vector(dataset: Dataset, keyword: str, length: int, path: Path) -> np.ndarray | None:
    value = _element_value(dataset, keyword)
    if value is None:
        return None
    try:
        vector = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"tag {keyword} holds {value!r}, not {length} numbers", path) from None
    if vector.shape != (length,) or not np.isfinite(vector).all():
        raise DataError(f"tag {keyword} holds {value!r}, not {length} finite numbers", path)
    return vector


def _pixel_spacing(dataset: Dataset, path: Path) -> tuple[float, float] | None:
    spacing = _float_vector(dataset, "PixelSpacing", 2, path)
    if spacing is None:
        return None
    if (spacing <= 0).any():
        raise DataError(f"tag PixelSpacing holds {spacing.tolist()}, spacings must be positive", path)
    return float(spacing[0]), float(spacing[1])


def _slice_location(dataset: Dataset, path: Path) -> float | None:
    location = _optional_float(dataset, "SliceLocation", path)
    if location is not None:
        return location
    position = _float_vector(dataset, "ImagePositionPatient", 3, path)
    orientation = _float_vector(dataset, "ImageOrientationPatient", 6, path)
    if position is None or orientation is None:
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    norm = float(np.linalg.norm(normal))
    if norm == 0.0:
        raise DataError("tag ImageOrientationPatient has parallel row and column directions", path)
    return float(np.dot(position, normal / norm))


def _slice_thickness(dataset: Dataset, path: Path) -> float | None:
    # The distance between slice centres is what volumes and 3D metrics need; SliceThickness is
    # the fallback (the two differ when slices have a gap or overlap).
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _optional_float(dataset, keyword, path)
        if value is not None and value != 0.0:
            return abs(value)
    return None


def _instance_number(dataset: Dataset, path: Path) -> int | None:
    value = _element_value(dataset, "InstanceNumber")
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataError(f"tag InstanceNumber holds {value!r}, not an integer", path) from None


def _optional_str(dataset: Dataset, keyword: str) -> str | None:
    value = _element_value(dataset, keyword)
    return None if value is None else str(value)

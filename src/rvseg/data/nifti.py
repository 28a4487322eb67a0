"""NIfTI volumes: read one (2D, 3D or 4D), cut it into short-axis slices, and save masks in its geometry.

**Orientation** (the convention of :mod:`rvseg.data.acdc`, so that a model trained on an ACDC
prepared set sees new volumes as it saw its training slices): a volume's voxel array has axes
(i, j, k[, t]), k across the slices and t over the cardiac cycle. Slice ``z`` at frame ``t`` is
``data[:, :, z, t]`` as stored, not rotated for display: rows run along i, columns along j, so its
pixel spacing is ``(zooms[0], zooms[1])``. Where a slice lies is its plane's position along the plane
normal in mm, from the affine (:func:`slice_locations`), not the slice thickness ``zooms[2]``. The
affine is nibabel's (the sform where it is coded), except where the sform is a coded qform's with unit
axis lengths (the ACDC files' defect, which would put their slices 1 mm apart): then the qform, as ITK
reads it. Other disagreements of sform and voxel sizes keep the sform, with a note.

**Units.** Voxel sizes and the affine are in mm; a header in metres or micrometres is converted.
Non-finite voxels (NaN outside a resampled field of view, say) are set to the volume's lowest finite
value, with a note, because one NaN would otherwise turn a whole slice's normalisation into NaN.

A mask saved with :func:`save_like` has the source's geometry (affine, qform and sform with their
codes, voxel sizes, units), so viewers overlay it on the image and ``data[:, :, z]`` of the mask is
the mask of ``data[:, :, z]`` of the image. It does not carry the source's free-text fields or header
extensions, which may hold patient details.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.imageglobals import logger as nib_logger

from rvseg.errors import DataError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: mm per unit of the header's spatial unit (``unknown``: taken as mm, as NIfTI readers do).
MM_PER_UNIT = {"mm": 1.0, "unknown": 1.0, "meter": 1000.0, "micron": 0.001}
#: NIfTI intent code of a label volume (NIFTI_INTENT_LABEL).
INTENT_LABEL = 1002


#: Said once however many files it applies to (the ACDC set has 300 such files).
QFORM_NOTE = ("NIfTI files whose sform has unit voxel sizes beside a qform of the header's (as the ACDC files do) "
              "are placed by their qform, as ITK reads them")


@dataclass
class NiftiVolume:
    """One NIfTI image as read.

    Attributes:
        path: the file.
        data: float32 (I, J, K) or (I, J, K, T) intensities (scaling of the header applied); a 2D
            image has K = 1. Trailing axes of size 1 beyond the third are dropped.
        zooms: voxel sizes of the header, mm for the first three axes (the fourth, when present, is the
            time between frames in the header's time unit).
        affine: float64 (4, 4) voxel-to-world matrix.
        image: the nibabel image, whose header :func:`save_like` copies.
        notes: what was changed on reading (non-finite voxels replaced).
    """

    path: Path
    data: np.ndarray
    zooms: tuple[float, ...]
    affine: np.ndarray
    image: nib.Nifti1Image | nib.Nifti2Image
    notes: list[str] = field(default_factory=list)

    @property
    def spacing_mm(self) -> tuple[float, float]:
        """(row, column) pixel spacing of a slice ``data[:, :, z]``, in mm."""
        return self.zooms[0], self.zooms[1]

    @property
    def n_frames(self) -> int:
        """T, the number of time frames (1 for a 3D volume)."""
        return self.data.shape[3] if self.data.ndim == 4 else 1


def is_nifti(path: Path) -> bool:
    """Whether a file name ends in ``.nii`` or ``.nii.gz`` (case ignored)."""
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: Path) -> str:
    """The file name without ``.nii`` or ``.nii.gz`` (``patient001_4d.nii.gz`` -> ``patient001_4d``)."""
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


class _Collect(logging.Handler):
    def __init__(self, messages: list[str]):
        super().__init__(logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _nibabel_messages() -> Iterator[list[str]]:
    """Collect what nibabel's header checks log (``pixdim[1,2,3] should be positive; setting to abs``),
    which its own handler would print to stderr amid rvseg's output; the caller makes them notes."""
    messages: list[str] = []
    handlers, propagate = list(nib_logger.handlers), nib_logger.propagate
    for handler in handlers:
        nib_logger.removeHandler(handler)
    collect = _Collect(messages)
    nib_logger.addHandler(collect)
    nib_logger.propagate = False
    try:
        yield messages
    finally:
        nib_logger.removeHandler(collect)
        for handler in handlers:
            nib_logger.addHandler(handler)
        nib_logger.propagate = propagate


def _load(path: Path):
    """The NIfTI image of ``path``, compressed or not whatever its suffix says: browsers and servers that
    unpack a download on the fly leave an uncompressed ``.nii.gz`` (nibabel goes by the suffix)."""
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    if gzipped == (path.suffix.lower() == ".gz"):
        return nib.load(path)
    data = gzip.decompress(path.read_bytes()) if gzipped else path.read_bytes()
    # sizeof_hdr, the header's first field, in either byte order: 348 for NIfTI-1, 540 for NIfTI-2.
    nifti2 = 540 in (int.from_bytes(data[:4], "little"), int.from_bytes(data[:4], "big"))
    return (nib.Nifti2Image if nifti2 else nib.Nifti1Image).from_bytes(data)


def read_nifti(path: str | Path) -> NiftiVolume:
    """Read a ``.nii`` / ``.nii.gz`` image of 2 to 4 dimensions (after dropping trailing axes of size 1).

    Raises:
        DataError: the file cannot be read as NIfTI; it holds complex values, more than 4 dimensions of
            size > 1, or no finite voxel; its affine has no plane (parallel or zero in-plane axes).
    """
    path = Path(path)
    try:
        with _nibabel_messages() as messages:
            image = _load(path)
        if image.get_data_dtype().kind == "c":
            raise DataError("holds complex values; expected real intensities", path)
        data = np.asarray(image.get_fdata(dtype=np.float32))
        zooms = tuple(float(size) for size in image.header.get_zooms())
        affine = np.array(image.affine, dtype=np.float64)  # a copy: it is scaled to mm below
        spatial_unit = image.header.get_xyzt_units()[0]
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - nibabel and the gzip layer raise many kinds of errors
        raise DataError(f"cannot be read as a NIfTI volume ({exc.__class__.__name__}: {exc})", path) from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, np.newaxis]
    if data.ndim not in (3, 4):
        raise DataError(f"is not a 2D, 3D or 4D image (shape {data.shape})", path)
    scale = MM_PER_UNIT.get(spatial_unit, 1.0)
    zooms = tuple(size * scale for size in zooms[:3]) + zooms[3:]
    affine[:3] *= scale
    normal = np.cross(affine[:3, 0], affine[:3, 1])
    if not np.all(np.isfinite(affine)) or np.linalg.norm(normal) == 0:
        raise DataError("has an affine without an image plane (parallel, zero or non-finite axes)", path)
    notes = [f"{path}: {message}" for message in dict.fromkeys(messages)]
    if not _scales_agree(affine, zooms):
        # Only an sform can disagree (a qform is built from pixdim). The ACDC files have an sform of unit
        # scales beside a qform of 1.3 x 1.3 x 10 mm voxels and the same directions: slices placed by that
        # sform would be 1 mm apart and volumes 10 times too small. ITK (so nnU-Net) reads such files by
        # their qform. Any other disagreement keeps the sform, which may rightly say where the slices are
        # (10 mm apart where pixdim holds an 8 mm slice thickness).
        qform, qform_code = image.get_qform(coded=True)  # (None, 0) without a qform
        if qform_code:
            qform = np.array(qform, dtype=np.float64)
            qform[:3] *= scale
            if _unit_scales_beside(affine, qform, scale):
                affine = qform
                notes.append(QFORM_NOTE)
    if not _scales_agree(affine, zooms):
        # Neither agrees: areas use one scale, slice positions the other.
        axis_lengths = _axis_lengths(affine, zooms)
        notes.append(f"{path}: the header's voxel sizes ({' x '.join(f'{size:g}' for size in zooms[:3])} mm) differ "
                     f"from the affine's ({' x '.join(f'{size:.4g}' for size in axis_lengths)} mm); pixel areas use "
                     "the voxel sizes, slice positions the affine")
    finite = np.isfinite(data)
    if not finite.all():
        if not finite.any():
            raise DataError("holds no finite voxel", path)
        count = int(data.size - np.count_nonzero(finite))
        data[~finite] = data[finite].min()
        notes.append(f"{path}: {count} non-finite voxel(s) set to the lowest finite value")
    return NiftiVolume(path=path, data=data, zooms=zooms, affine=affine, image=image, notes=notes)


def _unit_scales_beside(sform: np.ndarray, qform: np.ndarray, unit: float) -> bool:
    """Whether ``sform`` (in mm) is ``qform``'s directions with every axis length set to one header unit
    (``unit`` mm) or to 1 mm: the ACDC files' defect."""
    sform_lengths = np.linalg.norm(sform[:3, :3], axis=0)
    qform_lengths = np.linalg.norm(qform[:3, :3], axis=0)
    unit_lengths = any(np.allclose(sform_lengths, length, rtol=0.01) for length in (unit, 1.0))
    return bool(unit_lengths and np.all(qform_lengths > 0)
                and np.allclose(sform[:3, :3] / sform_lengths, qform[:3, :3] / qform_lengths, atol=1e-3))


def _axis_lengths(affine: np.ndarray, zooms: tuple[float, ...]) -> np.ndarray:
    """The affine's length per voxel along each axis the header sizes (a 2D header has two)."""
    return np.linalg.norm(affine[:3, :3], axis=0)[: len(zooms[:3])]


def _scales_agree(affine: np.ndarray, zooms: tuple[float, ...]) -> bool:
    """Whether the affine's axis lengths are the header's voxel sizes (within 1 %)."""
    return bool(np.allclose(_axis_lengths(affine, zooms), zooms[:3], rtol=0.01))


def slice_locations(affine: np.ndarray, count: int) -> list[float]:
    """Position in mm of each of ``count`` slices ``data[:, :, z]`` along the normal of their plane.

    Args:
        affine: the (4, 4) voxel-to-world matrix of the volume.
        count: K, the number of slices.
    """
    normal = np.cross(affine[:3, 0], affine[:3, 1])
    normal /= np.linalg.norm(normal)
    # Voxel (0, 0, z) lies at affine[:3, 3] + z * affine[:3, 2] in the world.
    return [float(np.dot(affine[:3, 3] + z * affine[:3, 2], normal)) for z in range(count)]


def save_like(reference: NiftiVolume, data: np.ndarray, path: str | Path) -> None:
    """Save uint8 label ``data`` (the shape of ``reference.data``) as NIfTI in the reference's geometry.

    The reference's header is copied (qform and sform with their codes, voxel sizes, units), its
    intensity scaling reset so that the stored values are those of ``data``, its free-text fields and
    extensions (which may name the patient) cleared, and its intent set to a label volume.
    """
    if data.shape != reference.data.shape:
        raise ValueError(f"data of shape {data.shape} for a volume of shape {reference.data.shape}")
    header = reference.image.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0, float(data.max(initial=0))
    header["descrip"], header["aux_file"] = b"rvseg mask", b""
    if "db_name" in header:  # NIfTI-1 keeps the ANALYZE field, which may name the patient
        header["db_name"] = b""
    header.set_intent(INTENT_LABEL)
    header.extensions.clear()
    # The image's own affine, in the header's units (reference.affine is in mm).
    saved = type(reference.image)(data.reshape(reference.image.shape).astype(np.uint8), reference.image.affine, header)
    nib.save(saved, str(path))


def single_slice_series(volumes: Mapping[str, NiftiVolume]) -> tuple[list[list[str]], list[str]]:
    """The single-slice images among ``volumes`` that are the slices of one stack, as lists of names.

    dcm2niix writes a short-axis cine acquired slice by slice (one series per slice) as one
    (I, J, 1[, T]) file per slice. Such files are joined into one stack when they lie in one folder,
    share their in-plane axes (the affine's first two columns, so orientation and pixel spacing), their
    size and their number of frames, and lie at distinct, evenly spaced positions (gaps within 10% of
    each other): two series or two patients exported into one folder rarely interleave that evenly.

    Returns:
        (groups of two or more names, each in order of position; notes naming the groups joined and
        those left apart).
    """
    groups: dict[tuple, list[tuple[float, str]]] = {}
    for name, volume in volumes.items():
        if volume.data.shape[2] != 1:
            continue
        axes = tuple(np.round(volume.affine[:3, :2].ravel(), 3))
        key = (volume.path.parent, volume.data.shape, axes)
        groups.setdefault(key, []).append((slice_locations(volume.affine, 1)[0], name))
    series, notes = [], []
    for (folder, _, _), members in groups.items():
        if len(members) < 2:
            continue
        members.sort()
        names = [name for _, name in members]
        gaps = np.diff([position for position, _ in members])
        if gaps.min() > 0.01 and gaps.max() <= 1.1 * gaps.min():
            series.append(names)
            notes.append(f"{folder}: {len(names)} single-slice images joined into one stack, {gaps.mean():.2f} mm "
                         f"apart ({names[0]} ... {names[-1]})")
        else:
            notes.append(f"{folder}: {len(names)} single-slice images of one plane not joined into a stack: their "
                         "positions repeat or are unevenly spaced")
    return series, notes

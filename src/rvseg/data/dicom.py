"""Reading single-frame DICOM images with the metadata the readers and prediction need.

Every problem with a file (not DICOM, corrupt, no pixel data, malformed geometry tags) is raised as
a :class:`~rvseg.errors.DataError` naming the file; pydicom's own exceptions never leak out.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import dictionary_has_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from rvseg.errors import DataError

#: A DICOM Part 10 file starts with a 128-byte preamble followed by these four bytes.
DICOM_MAGIC = b"DICM"
DICOM_PREAMBLE_BYTES = 128
#: Slice locations equal to this many decimals (mm) are one slice.
LOCATION_DECIMALS = 2
#: Image planes whose normals differ by less than this angle are parallel (one stack of slices).
PARALLEL_PLANES_DEGREES = 1.0


@dataclass(frozen=True)
class DicomImage:
    """One 2D DICOM image.

    Attributes:
        pixels: float32 array of shape (H, W), stored values with RescaleSlope/Intercept applied.
        spacing_mm: (row spacing, column spacing) in mm from PixelSpacing, or None.
        trigger_time: ms after the R wave (TriggerTime), or None.
        slice_location: SliceLocation, else :attr:`position` projected on :attr:`normal`, else None.
            Orders and names the slices of a series, but is no distance: some scanners (GE) measure
            it along the table axis, not the slice normal (see :func:`plane_positions`).
        slice_thickness_mm: SpacingBetweenSlices, else SliceThickness, else None.
        instance_number: InstanceNumber, or None.
        series_uid: SeriesInstanceUID, or None.
        path: the file read.
        study_uid: StudyInstanceUID, or None.
        normal: unit normal of the image plane (row direction x column direction of
            ImageOrientationPatient), or None.
        position: ImagePositionPatient (mm, patient coordinates of the first pixel's centre), or None.
        cardiac_images: CardiacNumberOfImages (frames of one cardiac cycle of a cine), or None.
        frame_number: the frame (from 1) of a multi-frame file, None for a single-frame one.
        series_number: SeriesNumber (the order in which a study's series were acquired), or None.
        size: (H, W) when ``pixels`` were not read (:func:`read_dicom_header`) or were let go
            (:meth:`without_pixels`), else None.
    """

    pixels: np.ndarray | None
    spacing_mm: tuple[float, float] | None
    trigger_time: float | None
    slice_location: float | None
    slice_thickness_mm: float | None
    instance_number: int | None
    series_uid: str | None
    path: Path
    study_uid: str | None = None
    normal: tuple[float, float, float] | None = None
    position: tuple[float, float, float] | None = None
    cardiac_images: int | None = None
    frame_number: int | None = None
    series_number: int | None = None
    size: tuple[int, int] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the image."""
        return self.size if self.pixels is None else self.pixels.shape  # type: ignore[return-value]

    def without_pixels(self) -> DicomImage:
        """This image's metadata only: a large study is stacked without holding its pixels (read them
        again with :func:`read_dicom_frames`)."""
        return dataclasses.replace(self, pixels=None, size=self.shape)


def is_dicom(path: str | Path) -> bool:
    """Whether ``path`` is a DICOM file (reads :data:`HEAD_BYTES` only): a Part 10 file, its 128-byte preamble
    followed by ``DICM``, or a bare data set as ACR-NEMA-era archives and some tools write it, without
    preamble (:func:`starts_with_data_set`)."""
    head = _head(path)
    return _has_part10_marker(head) or starts_with_data_set(head)


#: Bytes read to recognise a DICOM file: the Part 10 preamble and marker, or a bare data set's first
#: elements.
HEAD_BYTES = 512
#: The value length of an element read up to its delimiter (a sequence).
UNDEFINED_LENGTH = 0xFFFFFFFF
#: The file meta group (transfer syntax, SOP class...), always explicit VR little endian.
FILE_META_GROUP = 0x0002
#: Groups a bare data set may start with: the file meta group (written without its preamble) or the
#: identifying group 0008 (SpecificCharacterSet, ImageType, SOPClassUID...) that every image has.
BARE_FIRST_GROUPS = (FILE_META_GROUP, 0x0008)


def starts_with_data_set(head: bytes) -> bool:
    """Whether ``head``, a file's first bytes (:data:`HEAD_BYTES` of them, fewer for a shorter file),
    opens a little-endian DICOM data set: its first element in :data:`BARE_FIRST_GROUPS`, and its first
    two elements each with a VR (explicit: two letters naming one; implicit: a tag of the DICOM
    dictionary) and a length that fits the file, their tags ascending. No PNG, JPEG, NIfTI or text file
    starts that way, and a raw pixel dump whose first values happen to read as a tag fails the second
    element."""
    first = _element_at(head, 0)
    if first is None or first[0][0] not in BARE_FIRST_GROUPS:
        return False
    tag, end = first
    if end > len(head):  # a long first element: it fits a file longer than what was read
        return len(head) == HEAD_BYTES
    second = _element_at(head, end)
    return second is not None and second[0] > tag


def _element_at(head: bytes, offset: int) -> tuple[tuple[int, int], int] | None:
    """``((group, element), offset past its value)`` of the data element at ``offset``, read as explicit
    VR when it names one, else as implicit VR (never for the file meta group, which is explicit VR by the
    standard); None when the bytes are no data element."""
    if offset + 8 > len(head):
        return None
    group, element = struct.unpack_from("<HH", head, offset)
    vr = head[offset + 4:offset + 6].decode("latin-1")
    if vr in EXPLICIT_VR_LENGTH_32:
        if offset + 12 > len(head):
            return None
        header, length = 12, struct.unpack_from("<I", head, offset + 8)[0]
    elif vr in VR.__members__:
        header, length = 8, struct.unpack_from("<H", head, offset + 6)[0]
    elif group != FILE_META_GROUP and dictionary_has_tag((group << 16) | element):
        header, length = 8, struct.unpack_from("<I", head, offset + 4)[0]
    else:
        return None
    if length == UNDEFINED_LENGTH:  # a sequence read to its delimiter: nothing past it can be checked here
        return (group, element), HEAD_BYTES + 1
    return (group, element), offset + header + length


def _head(path: str | Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(HEAD_BYTES)
    except OSError:
        return b""


def _has_part10_marker(head: bytes) -> bool:
    return head[DICOM_PREAMBLE_BYTES:DICOM_PREAMBLE_BYTES + len(DICOM_MAGIC)] == DICOM_MAGIC


def read_dicom(path: str | Path) -> DicomImage:
    """Read a single-frame greyscale DICOM image and its geometry/timing metadata.

    Args:
        path: a DICOM file (:func:`is_dicom`).

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
        stored = _decoded(dataset, path)
        if stored.ndim != 2:
            raise DataError(f"expected one 2D greyscale frame, the pixel data has shape {tuple(stored.shape)}", path)
        return _image(dataset, dataset, stored, path)


#: Elements larger than this are located, not read, by :func:`read_dicom_header` (the pixel data).
DEFERRED_BYTES = 4096


def read_dicom_header(path: str | Path) -> DicomImage:
    """A single-frame DICOM image's metadata (a :class:`DicomImage` without ``pixels``), its pixel data
    neither read nor decoded: about half the time of :func:`read_dicom`, for the frames of a cine that
    only order it (a few in twenty carry contours). The file is refused as :func:`read_dicom` would
    refuse it, with the checks that need no decoding.

    Raises:
        DataError: the file is missing, not DICOM or corrupt, gives no Rows and Columns, holds several
            frames or colour, its pixel data is missing, cut short or compressed beyond the installed
            decoders, or it has a malformed timing, spacing or geometry tag.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("DICOM file does not exist", path)
    with pydicom.config.disable_value_validation():
        dataset = _read_dataset(path, defer_size=DEFERRED_BYTES)
        rows, columns = _optional_int(dataset, "Rows", path), _optional_int(dataset, "Columns", path)
        if not rows or not columns:
            raise DataError("DICOM file gives no image size (Rows, Columns): not an image", path)
        if (_optional_int(dataset, "NumberOfFrames", path) or 1) > 1:
            raise DataError("expected one 2D greyscale frame, the file holds several", path)
        _check_pixel_data_unread(dataset, rows, columns, path)
        return _image(dataset, dataset, None, path, size=(rows, columns))


def read_dicom_frames(path: str | Path) -> list[DicomImage]:
    """Every frame of a DICOM file: the one image of a single-frame file, or each frame of a multi-frame
    one, as enhanced MR exports (Philips, Siemens XA) store a whole cine.

    A frame's geometry and timing come from its per-frame functional groups, else the shared ones
    (PS3.3 C.7.6.16), else the file's top-level tags: ImagePositionPatient (Plane Position),
    ImageOrientationPatient (Plane Orientation), PixelSpacing, SliceThickness and SpacingBetweenSlices
    (Pixel Measures), RescaleSlope and RescaleIntercept (Pixel Value Transformation), and the trigger
    time from NominalCardiacTriggerDelayTime (Cardiac Synchronization), else, for a multi-frame file
    of the Cine module (no functional groups), TriggerTime plus the frame's time from FrameTimeVector
    or FrameTime, else TriggerTime. A frame's
    slice location is its position along its plane's normal (the top-level SliceLocation, one value
    for the file, describes no single frame).

    Raises:
        DataError: as :func:`read_dicom`; or the pixel data does not hold NumberOfFrames greyscale frames.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("DICOM file does not exist", path)
    with pydicom.config.disable_value_validation():
        dataset = _read_dataset(path)
        count = _optional_int(dataset, "NumberOfFrames", path) or 1
        stored = _decoded(dataset, path)
        enhanced = "PerFrameFunctionalGroupsSequence" in dataset or "SharedFunctionalGroupsSequence" in dataset
        per_frame = dataset.get("PerFrameFunctionalGroupsSequence") or []
        if per_frame and len(per_frame) != count:
            # Frames past its end would silently lose their position and timing.
            raise DataError(f"PerFrameFunctionalGroupsSequence has {len(per_frame)} items for {count} frames", path)
        if count <= 1 and stored.ndim == 2:
            # An enhanced MR file of one frame keeps its geometry in the functional groups too.
            return [_image(FrameTags(dataset, 0) if enhanced else dataset, dataset, stored, path)]
        if stored.ndim != 3 or stored.shape[0] != count:
            raise DataError(f"NumberOfFrames is {count} but the pixel data has shape {tuple(stored.shape)}; expected "
                            f"{count} greyscale frames", path)
        return [_image(FrameTags(dataset, k), dataset, stored[k], path, frame_number=k + 1) for k in range(count)]


class FrameTags:
    """The tags of frame ``index`` of a multi-frame dataset, looked up as :func:`read_dicom_frames` says
    (``get`` as on a pydicom Dataset)."""

    #: Functional group sequence of each per-frame tag.
    GROUPS = {
        "ImagePositionPatient": "PlanePositionSequence",
        "ImageOrientationPatient": "PlaneOrientationSequence",
        "PixelSpacing": "PixelMeasuresSequence",
        "SliceThickness": "PixelMeasuresSequence",
        "SpacingBetweenSlices": "PixelMeasuresSequence",
        "RescaleSlope": "PixelValueTransformationSequence",
        "RescaleIntercept": "PixelValueTransformationSequence",
        "TriggerTime": "CardiacSynchronizationSequence",
    }
    #: Tags of the whole file that describe no single frame.
    NOT_PER_FRAME = ("SliceLocation", "InstanceNumber")

    def __init__(self, dataset: Dataset, index: int):
        per_frame = dataset.get("PerFrameFunctionalGroupsSequence") or []
        shared = dataset.get("SharedFunctionalGroupsSequence") or []
        self.groups = [group for group in (per_frame[index] if per_frame else None, shared[0] if shared else None)
                       if group is not None]
        self.dataset = dataset
        self.index = index

    def get(self, keyword: str, default=None):
        if keyword in self.NOT_PER_FRAME:
            return default
        sequence = self.GROUPS.get(keyword)
        if sequence is not None:
            inner = "NominalCardiacTriggerDelayTime" if keyword == "TriggerTime" else keyword
            for group in self.groups:
                items = group.get(sequence) or []
                if items and items[0].get(inner) not in (None, ""):
                    return items[0].get(inner)
        value = self.dataset.get(keyword, default)
        elapsed = self.cine_time() if keyword == "TriggerTime" else None
        if elapsed is not None:  # the file's TriggerTime is its first frame's
            try:
                return elapsed + (float(value) if value not in (None, "") else 0.0)
            except (TypeError, ValueError):
                return value  # malformed: reported as such by the caller
        return value

    def cine_time(self) -> float | None:
        """Milliseconds from the first frame to this one by the Cine module of a multi-frame file without
        functional groups (PS3.3 C.7.6.5): the sum of FrameTimeVector's increments (its first is 0), else
        the frame index times FrameTime; None when neither is given (or either is malformed)."""
        try:
            vector = self.dataset.get("FrameTimeVector")
            if vector not in (None, ""):
                increments = [float(value) for value in (vector if isinstance(vector, Sequence) else [vector])]
                return sum(increments[: self.index + 1]) if len(increments) > self.index else None
            frame_time = self.dataset.get("FrameTime")
            return self.index * float(frame_time) if frame_time not in (None, "") else None
        except (TypeError, ValueError):
            return None


def _image(tags, dataset: Dataset, stored: np.ndarray | None, path: Path, frame_number: int | None = None,
           size: tuple[int, int] | None = None) -> DicomImage:
    """The DicomImage of ``stored`` (H, W) pixels, or of none (metadata only, ``size`` given), its tags
    looked up in ``tags`` (a Dataset or FrameTags)."""
    normal = _plane_normal(tags, path)
    position = _float_vector(tags, "ImagePositionPatient", 3, path)
    return DicomImage(
        pixels=None if stored is None else _values(stored, tags, dataset, path),
        size=size,
        spacing_mm=_pixel_spacing(tags, path),
        trigger_time=_optional_float(tags, "TriggerTime", path),
        slice_location=_slice_location(tags, normal, position, path),
        slice_thickness_mm=_slice_thickness(tags, path),
        instance_number=frame_number or _optional_int(tags, "InstanceNumber", path),
        series_uid=_optional_str(dataset, "SeriesInstanceUID"),
        path=path,
        study_uid=_optional_str(dataset, "StudyInstanceUID"),
        normal=None if normal is None else tuple(normal.tolist()),
        position=None if position is None else tuple(position.tolist()),
        cardiac_images=_cardiac_images(dataset),
        frame_number=frame_number,
        series_number=_series_number(dataset),
    )


def _slice_location(tags, normal: np.ndarray | None, position: np.ndarray | None, path: Path) -> float | None:
    """SliceLocation, else the image's ``position`` projected on its plane ``normal``, else None."""
    location = _optional_float(tags, "SliceLocation", path)
    if location is None and normal is not None and position is not None:
        return float(np.dot(position, normal))
    return location


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


def dicom_stacks(images: Iterable[DicomImage]) -> list[list[DicomImage]]:
    """Group images into stacks of parallel slices, each ordered by :func:`order_series`.

    A stack is the images of one series in one plane orientation (parallel within
    :data:`PARALLEL_PLANES_DEGREES`): a localiser series of three planes makes three stacks, and a
    long-axis image stored in the short-axis series never joins its volume. Series of one study are
    joined into one stack when their planes are parallel, their images have the same size, their
    slices hold about as many frames (at least 80 %: a prospectively triggered cine, or a slice that
    lost frame files) and each new slice lies at least 95 % of a slice step from every slice already
    in the stack (:func:`_joins`): many scanners store every short-axis slice of a cine, or every
    breath-hold's few slices, as a series of its own, while a repeated slice or a second acquisition
    shifted by half a step is another measurement of the same heart. Series are joined in the order
    of their SeriesNumber, then of their slice locations, so a repeat (acquired later) meets the
    stack it repeats, whatever the order of the files. Series of one image each in one plane at
    distinct trigger times are first taken as one slice's cine (an export of an image per series).
    Images without orientation stay in their series' stack.

    Returns:
        the stacks in order of first appearance of their series.
    """
    parts: dict[tuple[str | None, int], list[DicomImage]] = {}
    normals: dict[str | None, list[np.ndarray]] = {}
    for image in images:
        part = _orientation_index(normals.setdefault(image.series_uid, []), image.normal)
        parts.setdefault((image.series_uid, part), []).append(image)
    parts = _single_image_cines(parts)
    stacks: list[tuple[int, list[DicomImage]]] = []  # (first appearance of its series, images)
    # In acquisition order (SeriesNumber), then base to apex: a repeated slice, acquired after the one
    # it repeats, then meets a stack that already holds its neighbours, whatever the file order.
    for order, members in sorted(enumerate(parts.values()), key=lambda item: _join_order(item[1])):
        partner = None
        if members[0].normal is not None:
            partner = next((index for index, (_, stack) in enumerate(stacks)
                            if stack[0].normal is not None and _joins(stack, members)), None)
        if partner is None:
            stacks.append((order, list(members)))
        else:
            first, stack = stacks[partner]
            stacks[partner] = (min(first, order), stack + members)
    return [order_series(stack) for _, stack in sorted(stacks, key=lambda item: item[0])]


def _single_image_cines(parts: dict[tuple, list[DicomImage]]) -> dict[tuple, list[DicomImage]]:
    """``parts`` with the series of one image each that lie in one plane of one study (same orientation,
    position and size) at distinct trigger times merged into one part: a slice's cine exported an image
    per series, as some exports and anonymisers write it. The joins would take each for a repeat of
    the slice, and a cine would fall apart into one stack per phase."""
    planes: dict[tuple, list[tuple]] = {}
    for key, members in parts.items():
        image = members[0]
        if len(members) == 1 and None not in (image.normal, image.position, image.trigger_time):
            offset = round(float(np.dot(image.position, image.normal)), LOCATION_DECIMALS)
            plane = (image.study_uid, image.shape, tuple(np.round(image.normal, 3)), offset)
            planes.setdefault(plane, []).append(key)
    merged = dict(parts)
    for keys in planes.values():
        times = [parts[key][0].trigger_time for key in keys]
        if len(keys) > 1 and len(set(times)) == len(times):
            merged[keys[0]] = [parts[key][0] for key in keys]
            for key in keys[1:]:
                del merged[key]
    return merged


def _join_order(members: Sequence[DicomImage]) -> tuple:
    """Sort key of a series part: its SeriesNumber (parts without one after), then its lowest slice
    location (parts without one last)."""
    number = members[0].series_number
    locations = [image.slice_location for image in members if image.slice_location is not None]
    return (number is None, number or 0, not locations, min(locations) if locations else 0.0)


def _orientation_index(normals: list[np.ndarray], normal: np.ndarray | None) -> int:
    """Index of the plane orientation of ``normal`` among a series' ``normals`` (appended when new);
    -1 for an image without orientation."""
    if normal is None:
        return -1
    for index, known in enumerate(normals):
        if _parallel(known, normal):
            return index
    normals.append(np.asarray(normal))
    return len(normals) - 1


def _parallel(a: np.ndarray, b: np.ndarray) -> bool:
    return abs(float(np.dot(a, b))) >= math.cos(math.radians(PARALLEL_PLANES_DEGREES))


def plane_positions(stack: Sequence[DicomImage]) -> list[float] | None:
    """Where each image of a stack lies along the stack's slice normal, in mm; None if unknown.

    The position is ImagePositionPatient projected on the first image's plane normal, the distance
    between slice planes whatever the scanner writes in SliceLocation (GE, for one, measures that
    along the table axis: 6.7 mm apart for short-axis slices 10 mm apart).

    Returns:
        one position per image, or None when an image lacks ImagePositionPatient or
        ImageOrientationPatient.
    """
    if not stack or stack[0].normal is None or any(image.position is None for image in stack):
        return None
    normal = np.asarray(stack[0].normal)
    return [float(np.dot(image.position, normal)) for image in stack]


def _location_key(image: DicomImage) -> float | None:
    return None if image.slice_location is None else round(image.slice_location, LOCATION_DECIMALS)


def _joins(stack: list[DicomImage], members: list[DicomImage]) -> bool:
    """Whether the series part ``members`` (one series, one orientation) continues ``stack``: the same
    study, image size and plane orientation, about as many frames per slice, and new slices that lie a
    slice step away from every slice of the stack (:func:`_slice_step`). A repeat of a slice, a second
    acquisition of the heart shifted by half a step, or a slice just past the stack's end stays apart."""
    first, other = stack[0], members[0]
    if not (other.study_uid == first.study_uid and other.shape == first.shape and _parallel(other.normal, first.normal)
            and _similar_frame_counts(_frames_per_location(stack), _frames_per_location(members))):
        return False
    normal = np.asarray(first.normal)
    here, added = _plane_offsets(stack, normal), _plane_offsets(members, normal)
    if here is None or added is None:
        return False
    closest = min(abs(a - b) for a in added for b in here)
    # 0.95 (not half) of a step: with 6 mm slices 10 mm apart, a repeat 5 mm off stays apart.
    return closest >= max(0.95 * _slice_step(stack, members, here, added), 10.0 ** -LOCATION_DECIMALS)


def _plane_offsets(images: Sequence[DicomImage], normal: np.ndarray) -> list[float] | None:
    """The distinct positions (mm) of ``images``' planes along ``normal``, from ImagePositionPatient, else
    from SliceLocation; None when some image has neither."""
    if all(image.position is not None for image in images):
        values = [float(np.dot(image.position, normal)) for image in images]
    elif all(image.slice_location is not None for image in images):
        values = [float(image.slice_location) for image in images]
    else:
        return None
    return sorted({round(value, LOCATION_DECIMALS) for value in values})


def _slice_step(stack: Sequence[DicomImage], members: Sequence[DicomImage], here: list[float],
                added: list[float]) -> float:
    """The distance between neighbouring slices expected of a join: the smallest of the steps within the
    stack and the added series and of their slices' SpacingBetweenSlices or SliceThickness (a step
    within the stack may span a missing slice; overlapping slices are closer than thick); 0 when none
    is known."""
    known = [float(np.min(np.diff(offsets))) for offsets in (here, added) if len(offsets) > 1]
    known += [image.slice_thickness_mm for image in (stack[0], members[0]) if image.slice_thickness_mm]
    return min(known) if known else 0.0


def _frames_per_location(images: Sequence[DicomImage]) -> int:
    """The most frames any slice location of ``images`` holds."""
    return max(Counter(_location_key(image) for image in images).values())


def _similar_frame_counts(a: int, b: int) -> bool:
    """Equal, or cines of at least 80 % of each other's frames (a prospectively triggered cine holds
    fewer frames on slices acquired at a faster heart rate; a slice may have lost frame files)."""
    return a == b or (min(a, b) >= 2 and min(a, b) >= 0.8 * max(a, b))


def _read_dataset(path: Path, defer_size: int | None = None) -> Dataset:
    head = _head(path)
    bare = not _has_part10_marker(head)
    if bare and not starts_with_data_set(head):
        raise DataError("not a DICOM file (neither the 'DICM' marker after a 128-byte preamble nor a DICOM data "
                        "set at its start)", path)
    try:
        # pydicom warns on a damaged or non-conformant file (a truncated sequence, a VR it had to guess)
        # with a line of its own source; the file either reads or is refused with the warning's words.
        with warnings.catch_warnings(record=True) as remarks:
            warnings.simplefilter("always", UserWarning)
            dataset = pydicom.dcmread(path, defer_size=defer_size, force=bare)
    except InvalidDicomError as exc:
        raise DataError(f"not a DICOM file ({exc})", path) from None
    # pydicom raises a wide variety of exceptions on damaged files (struct.error, EOFError,
    # ValueError, KeyError, ...); all of them mean the same thing to the user.
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"corrupt DICOM file ({exc.__class__.__name__}: {exc})", path) from None
    if len(dataset) == 0:  # pydicom gives up on a file cut inside an undefined-length element, and warns
        ended = [f"{remark.message}" for remark in remarks if "delimiter" in f"{remark.message}"]
        why = ended[0].replace(f" in file {path}", "") if ended else "no data element could be read"
        raise DataError(f"corrupt DICOM file ({why}: it is truncated or damaged)", path)
    if _transfer_syntax(dataset) is None:
        _name_transfer_syntax(dataset)
    return dataset


def _name_transfer_syntax(dataset: Dataset) -> None:
    """Name the uncompressed transfer syntax pydicom read a data set in when the file names none (a bare
    data set has no file meta group): decoding its pixels needs it named."""
    implicit_vr, little_endian = dataset.original_encoding
    if implicit_vr is None:
        return
    if getattr(dataset, "file_meta", None) is None:
        dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit_vr else ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian)


class NotAnImageError(DataError):
    """A DICOM object that is no image by its SOP class: a DICOMDIR, a structured report, a presentation
    state or a key-object selection, which exports of a study hold beside its images."""


def _no_pixel_data(dataset: Dataset, path: Path) -> DataError:
    """The error of a file without PixelData: :class:`NotAnImageError` when its SOP class is a known
    non-image one, else a damaged image (its pixel data cut off)."""
    sop_class = _element_value(dataset, "SOPClassUID") or getattr(
        getattr(dataset, "file_meta", None), "MediaStorageSOPClassUID", None)
    name = UID(str(sop_class)).name if sop_class else ""
    if name and name != str(sop_class) and "Image Storage" not in name:
        return NotAnImageError(f"a DICOM {name} object, not an image", path)
    return DataError("DICOM file holds no pixel data (not an image, or the file is truncated)", path)


def _decoded(dataset: Dataset, path: Path) -> np.ndarray:
    """The stored pixel values: (H, W), or (frames, H, W) for a multi-frame file."""
    if "PixelData" not in dataset:
        raise _no_pixel_data(dataset, path)
    try:
        # pydicom's remarks on pixel data it decodes anyway (padding past the last frame, NumberOfFrames
        # 0 read as 1) stay here, as its remarks on reading do (:func:`_read_dataset`).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return dataset.pixel_array
    except Exception as exc:  # noqa: BLE001 - any decoding failure (truncated data, codec missing)
        raise DataError(f"cannot decode the DICOM pixel data ({decoding_problem(dataset, exc)})", path) from None


def _values(stored: np.ndarray, tags, dataset: Dataset, path: Path) -> np.ndarray:
    """float32 (H, W) values of one stored frame: MONOCHROME1 mirrored, RescaleSlope/Intercept applied."""
    slope = _optional_float(tags, "RescaleSlope", path)
    intercept = _optional_float(tags, "RescaleIntercept", path)
    pixels = stored.astype(np.float32)
    if str(dataset.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        # Displayed with the lowest value white (PS3.3 C.7.6.3.1.2): mirrored within the stored range
        # (the same for every image of a series, unlike an image's own min and max) into the usual
        # MONOCHROME2 look, which models and overlays expect.
        if int(dataset.get("PixelRepresentation", 0)) == 1:
            pixels = -1.0 - pixels  # two's complement: min + max = -1
        else:
            pixels = float(2 ** int(dataset.get("BitsStored", 8 * stored.dtype.itemsize)) - 1) - pixels
    if slope is not None:
        pixels *= np.float32(slope)
    if intercept is not None:
        pixels += np.float32(intercept)
    return pixels


def decoding_problem(dataset: Dataset, exc: Exception) -> str:
    """One line on why pixel data could not be decoded: for a compressed transfer syntax no installed
    decoder reads, which one and what reads it; for one whose decoder failed (damaged data, or a
    variant it does not support, as GDCM does not 12-bit JPEG Extended), its words and the way out."""
    one_line = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    problem = _undecodable_syntax(dataset) or f"{exc.__class__.__name__}: {one_line}"
    syntax = _transfer_syntax(dataset)
    if syntax is not None and syntax.is_transfer_syntax and syntax.is_compressed and "gdcmconv" not in problem:
        problem += (f"; if the file is whole, `gdcmconv --raw` decompresses it, or another of pydicom's decoders for "
                    f"{syntax.name} may read it (pylibjpeg with pylibjpeg-libjpeg)")
    return problem


def _undecodable_syntax(dataset: Dataset) -> str | None:
    """Why no installed decoder reads the dataset's transfer syntax, or None when one does. rvseg installs
    python-gdcm, which reads the JPEG, JPEG-LS, JPEG 2000 and RLE syntaxes clinical exports use; the rest
    (High-Throughput JPEG 2000) name what pydicom's decoders for them need."""
    from pydicom.pixels import get_decoder

    syntax = _transfer_syntax(dataset)
    if syntax is not None and not syntax.is_transfer_syntax:
        return f"its transfer syntax {syntax} is not a DICOM transfer syntax pydicom knows (private or damaged)"
    if syntax is None or not syntax.is_compressed:
        return None
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:  # a syntax no pydicom decoder reads at all (MPEG and other video)
        return (f"its transfer syntax {syntax.name} ({syntax}) is compressed and pydicom has no decoder for it: "
                "decompress the file with `gdcmconv --raw`")
    if decoder.is_available:
        return None
    needs = "; or ".join(decoder.missing_dependencies)
    return (f"its transfer syntax {syntax.name} ({syntax}) is compressed and no installed decoder reads it: install "
            f"what one needs ({needs}), or decompress the file with `gdcmconv --raw`")


def _transfer_syntax(dataset: Dataset):
    return getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)


def _check_pixel_data_unread(dataset: Dataset, rows: int, columns: int, path: Path) -> None:
    """Raise the :class:`DataError` that decoding would, without reading the pixel data: none there, a
    colour image, an uncompressed frame cut short, or a compressed one that no installed decoder reads."""
    if "PixelData" not in dataset:
        raise _no_pixel_data(dataset, path)
    samples = _optional_int(dataset, "SamplesPerPixel", path) or 1
    if samples != 1:
        raise DataError(f"expected one 2D greyscale frame, the image has {samples} samples per pixel", path)
    problem = _undecodable_syntax(dataset)
    if problem:
        raise DataError(f"cannot decode the DICOM pixel data ({problem})", path)
    syntax = _transfer_syntax(dataset)
    if syntax is not None and syntax.is_compressed:
        return  # encapsulated fragments: their size says nothing until decoded
    element = dataset.get_item("PixelData", keep_deferred=True)
    if getattr(element, "value", None) is not None:
        stored = len(element.value)
    elif syntax is not None and syntax.is_deflated:  # positions are in the inflated stream, not the file
        stored = element.length
    else:  # deferred: its declared length, and what the file holds past where it starts
        stored = min(element.length, max(path.stat().st_size - element.value_tell, 0))
    needed = math.ceil(rows * columns * (_optional_int(dataset, "BitsAllocated", path) or 16) / 8)
    if stored < needed:
        raise DataError(f"cannot decode the DICOM pixel data (it holds {stored} of the {needed} bytes of a "
                        f"{rows} x {columns} image: the file is truncated)", path)


def _element_value(dataset: Dataset, keyword: str):
    """The tag's value, or None when the tag is absent or empty.

    A value pydicom cannot convert to its VR's type (an IS of ``1e999`` overflows) comes back as its
    raw text, so that each caller reports or ignores it as it does any malformed value."""
    try:
        value = dataset.get(keyword)
    except (OverflowError, ValueError, TypeError):
        raw = dataset.get_item(keyword).value
        value = raw.decode("latin-1", "replace").strip(" \x00") if isinstance(raw, bytes) else str(raw)
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


def _plane_normal(dataset: Dataset, path: Path) -> np.ndarray | None:
    orientation = _float_vector(dataset, "ImageOrientationPatient", 6, path)
    if orientation is None:
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    norm = float(np.linalg.norm(normal))
    if norm == 0.0:
        raise DataError("tag ImageOrientationPatient has parallel row and column directions", path)
    return normal / norm


def _slice_thickness(dataset: Dataset, path: Path) -> float | None:
    # The distance between slice centres is what volumes and 3D metrics need; SliceThickness is
    # the fallback (the two differ when slices have a gap or overlap).
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _optional_float(dataset, keyword, path)
        if value is not None and value != 0.0:
            return abs(value)
    return None


def _optional_int(dataset: Dataset, keyword: str, path: Path) -> int | None:
    value = _element_value(dataset, keyword)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataError(f"tag {keyword} holds {value!r}, not an integer", path) from None


def _cardiac_images(dataset: Dataset) -> int | None:
    """CardiacNumberOfImages when it is a positive integer: only a hint (phase numbering), so a malformed
    value is ignored rather than rejecting the image."""
    value = _element_value(dataset, "CardiacNumberOfImages")
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _series_number(dataset: Dataset) -> int | None:
    """SeriesNumber when it is an integer: only orders the joining of series, so a malformed value is
    ignored rather than rejecting the image."""
    try:
        return int(_element_value(dataset, "SeriesNumber"))
    except (TypeError, ValueError):
        return None


def _optional_str(dataset: Dataset, keyword: str) -> str | None:
    value = _element_value(dataset, keyword)
    return None if value is None else str(value)

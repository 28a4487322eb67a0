"""The images ``rvseg predict`` segments: find and read them in a source (a file, a folder, an RVSC or
ACDC set, a prepared data set), in stack, slice and time order.

**Sources** (``src``):

- one DICOM file, one PNG / JPEG image, or one NIfTI image (``.nii`` / ``.nii.gz``: 2D, a 3D stack
  of short-axis slices, or a 4D cine of them over time), cut into slices as :mod:`rvseg.data.nifti`
  describes (the orientation a model trained on an ACDC prepared set saw);
- a folder (searched recursively, hidden files left out): every DICOM, PNG / JPEG and NIfTI image in
  it, e.g. a cine series or a whole study. DICOMs are grouped into stacks of parallel slices
  (:func:`~rvseg.data.dicom.dicom_stacks`: a series, or the single-slice series of one study's
  short-axis cine joined) and ordered by slice location, trigger time and instance number; each
  NIfTI file is a stack of its own (named after the file, made distinct from the DICOM stacks'
  names), except single-slice files of one folder that are the slices of one stack
  (:func:`~rvseg.data.nifti.single_slice_series`: dcm2niix's output for a cine acquired slice by
  slice), which form one stack named after the folder. NIfTI files named ``*_gt.nii[.gz]`` (label
  volumes), converter sidecars beside a NIfTI image (``.json``, ``.bval``, ``.bvec`` of its stem) and
  DICOM objects of a non-image SOP class (a ``DICOMDIR``, a report) are ignored;
- an RVSC patient folder (``patientNN/PNNdicom/*.dcm``) or a folder holding them (up to three levels
  down, as in ``TestSet/Test1Set/patient17``): each patient is a stack;
- an ACDC patient folder (``patientNNN/patientNNN_frameFF.nii.gz``) or a folder holding them (up to
  three levels down, as in ``database/testing/patient101``): the frame volumes (the ED and ES frames
  the challenge segments; not ``_gt`` label volumes, nor the ``_4d`` cine, which can be given as a
  file of its own, taking its phases from the ``Info.cfg`` beside it), each patient a stack, the
  phases from its ``Info.cfg``. Every other file below the folder is ignored;
- a prepared data set (a folder with ``dataset.json``): its (already normalised) images are used, and
  predictions are mapped to each sample's original size (``orig_height`` x ``orig_width``); the
  overlay then shows the prepared image resized to that size.

A file that is not a readable image is skipped (``skipped.csv``, and the returned summary; exit code
1); the rest is processed. A file left alone on purpose is listed, with why, in ``ignored.csv`` (exit
code 0). A single file that is not an image, or a folder without any, is an error. The output folder,
and any earlier predict output inside the source folder, is not read.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rvseg.checks import check_exists, finite_or_none
from rvseg.data import acdc
from rvseg.data.dataset import PreparedDataset, load_dataset
from rvseg.data.dicom import (
    DicomImage,
    NotAnImageError,
    dicom_stacks,
    is_dicom,
    plane_positions,
    read_dicom_frames,
)
from rvseg.data.folders import unique_folders
from rvseg.data.nifti import NiftiVolume, is_nifti, nifti_stem, read_nifti, single_slice_series, slice_locations
from rvseg.data.pngpairs import MAP_NAME, read_gray
from rvseg.data.rvsc import dicom_folder, looks_like_rvsc, patient_folders, patient_id
from rvseg.data.sample import ReadReport
from rvseg.errors import DataError
from rvseg.volumes import partly_positioned, partly_positioned_notes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
RVSC_FRAME_ID = re.compile(r"P\d+-(\d+)")
#: NIfTI files of label volumes (ACDC's ``patientNNN_frameFF_gt.nii.gz``), which are not images to segment.
GROUND_TRUTH_NAME = re.compile(r"_gt$", re.IGNORECASE)
LABEL_VOLUME_REASON = "a label volume (its name ends in _gt), not an image to segment"
#: An ACDC patient's whole cine, ``patientNNN_4d.nii.gz``.
ACDC_CINE_NAME = re.compile(r"^patient\d+_4d$", re.IGNORECASE)
#: Files that converters such as dcm2niix write beside a NIfTI image, with its stem.
SIDECAR_SUFFIXES = (".json", ".bval", ".bvec")


@dataclass
class InputImage:
    """One image to segment.

    Attributes:
        id: unique name of its outputs (file stem, made unique within the source).
        source: the file read (or, for a prepared data set, the sample's source image).
        pixels: float32 (h, w): raw intensities, or for a prepared data set its normalised image; None
            for a single-frame DICOM file, whose pixels are read again when it is segmented
            (:meth:`read_pixels`), so that a large study is never held in memory whole.
        shape: (H, W) of the original image, the geometry of every output.
        prepared: whether ``pixels`` are a prepared data set's (normalised, maybe resized) image.
        stack: the patient or series it belongs to ("" when unknown).
        spacing_mm: (row, column) pixel spacing in mm of the original image, or None.
        slice_location: the slice's location as the source gives it (DICOM SliceLocation; for NIfTI, the
            position along the slice normal from the affine), or None.
        position_mm: where the slice lies along its stack's normal (mm, from ImagePositionPatient;
            :func:`~rvseg.data.dicom.plane_positions`), or None: what slice spacings are measured on.
        trigger_time: ms after the R wave, or None.
        thickness_mm: slice thickness in mm (DICOM SpacingBetweenSlices, else SliceThickness; a NIfTI
            volume's third voxel size), or None.
        frame: frame or instance number (orders frames without trigger times), or None.
        phase: ``ED`` / ``ES`` when the source says so, else "".
        slice_number: the slice's number in its stack when the source gives one (a prepared data set's
            ``slice``), or None: orders slices without a location for the ``stack`` post-processing.
        volume: the NIfTI image it was cut from (a key of :attr:`Source.nifti`), or "".
        volume_index: where in that volume: ``(z,)`` for ``data[:, :, z]``, ``(z, t)`` for
            ``data[:, :, z, t]``.
    """

    id: str
    source: str
    pixels: np.ndarray | None
    shape: tuple[int, int]
    prepared: bool = False
    stack: str = ""
    spacing_mm: tuple[float, float] | None = None
    slice_location: float | None = None
    position_mm: float | None = None
    trigger_time: float | None = None
    thickness_mm: float | None = None
    frame: int | None = None
    phase: str = ""
    slice_number: float | None = None
    volume: str = ""
    volume_index: tuple[int, ...] = ()

    def read_pixels(self) -> np.ndarray:
        """:attr:`pixels`, read again from :attr:`source` (a single-frame DICOM file) when not held."""
        return read_dicom_frames(self.source)[0].pixels if self.pixels is None else self.pixels


@dataclass
class Source:
    """What :func:`read_source` found.

    Attributes:
        kind: ``file``-level kinds ``nifti`` / ``dicom`` / ``image``, or ``prepared``, ``rvsc``, ``acdc``,
            ``folder``.
        images: the images to segment, in order.
        skipped: ``{"path", "reason"}`` of each file that could not be read (exit code 1).
        ignored: ``{"path", "reason"}`` of each file left alone on purpose: ``_gt`` label volumes,
            converter sidecars, an ACDC root's other files (exit code 0).
        nifti: the NIfTI images the images were cut from, by name (the stem of their mask files).
        notes: what the reader of the outputs should know (e.g. non-finite voxels replaced).
        dataset: for ``prepared``, the data set (its options say how its pixels were normalised).
    """

    kind: str
    images: list[InputImage]
    skipped: list[dict[str, str]]
    ignored: list[dict[str, str]] = field(default_factory=list)
    nifti: dict[str, NiftiVolume] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    dataset: PreparedDataset | None = None

    def extend(self, other: Source) -> None:
        """Add everything ``other`` found (its kind aside).

        Raises:
            DataError: both hold a NIfTI image of the same name (their masks would overwrite each other).
        """
        clash = sorted(set(self.nifti) & set(other.nifti))
        if clash:
            raise DataError(f"holds a second NIfTI image named {clash[0]} in another patient's folder; rename one",
                            other.nifti[clash[0]].path)
        self.images += other.images
        self.skipped += other.skipped
        self.ignored += other.ignored
        self.nifti.update(other.nifti)
        self.notes += other.notes


def read_source(src: Path, exclude: Path | None = None) -> Source:
    """Find and read the images of ``src`` (module docstring), in stack / slice / time order.

    Args:
        src: the source.
        exclude: a folder whose files are not read even when it lies inside ``src`` (the output
            folder: a rerun must not segment the masks and overlays of the previous run).
    """
    check_exists(src)
    if src.is_file():
        source = read_files([src], stack=safe_name(nifti_stem(src)), kind="file")
        if source.skipped or source.ignored:
            raise DataError((source.skipped or source.ignored)[0]["reason"], src)
        source.kind = "nifti" if is_nifti(src) else "dicom" if is_dicom(src) else "image"
        return source
    if (src / "dataset.json").is_file():
        data = load_dataset(src)
        images, notes = prepared_images(data)
        return Source("prepared", images, [], notes=notes, dataset=data)
    files = source_files(src, exclude)
    outputs = earlier_outputs(src, files)
    files = [path for path in files if not any(path.is_relative_to(folder) for folder in outputs)]
    if looks_like_rvsc(src):
        source = rvsc_source(src, files)
    elif acdc.looks_like_acdc(src):
        source = acdc_source(src, files)
    else:
        source = read_files(files, stack=src.name, root=src, kind="folder")
    source.ignored += [{"path": str(folder), "reason": "an earlier rvseg predict output (not segmented again)"}
                       for folder in outputs]
    make_ids_unique(source.images)  # across patient folders too
    if not source.images:
        first = source.skipped[0] if source.skipped else None
        why = f"; the first, {first['path']}: {first['reason']}" if first else ""
        raise DataError(f"holds no readable DICOM, PNG, JPEG or NIfTI image ({len(source.skipped)} other file(s)"
                        f"{why})", src)
    return source


def source_files(src: Path, exclude: Path | None) -> list[Path]:
    """The files below ``src``, sorted, without hidden ones and without those inside ``exclude``."""
    excluded = None if exclude is None else exclude.resolve()
    return sorted(path for path in src.rglob("*")
                  if path.is_file() and not any(part.startswith(".") for part in path.relative_to(src).parts)
                  and not (excluded and path.resolve().is_relative_to(excluded)))


def earlier_outputs(src: Path, files: Sequence[Path]) -> list[Path]:
    """The folders below ``src`` that hold an rvseg predict output (``predictions.csv`` beside
    ``summary.json``): a new run into another folder must not segment their masks and overlays."""
    names = set(files)
    return sorted({path.parent for path in files if path.name == "predictions.csv" and path.parent != src
                   and path.parent / "summary.json" in names})


def read_files(files: Sequence[Path], stack: str, root: Path | None = None, kind: str = "folder") -> Source:
    """Read image files; DICOMs are grouped by series and ordered, each NIfTI file is cut into its slices,
    unreadable files are listed as skipped and known companions of NIfTI images as ignored.

    Args:
        files: the candidate files.
        stack: stack name of the DICOM images (a series UID, when a folder holds several series, is
            added); a NIfTI file is a stack named after its id (made distinct from the DICOM stacks'
            names), a PNG/JPEG image belongs to no stack.
        root: the folder searched, used to make duplicate file stems unique; None for a flat folder.
        kind: :attr:`Source.kind` of the result.
    """
    source = Source(kind, [], [])
    nifti_stems = {(path.parent, nifti_stem(path)) for path in files if is_nifti(path)}
    candidates = []
    for path in files:
        why_not = companion_reason(path, nifti_stems)
        if why_not:
            source.ignored.append({"path": str(path), "reason": why_not})
        else:
            candidates.append(path)
    ids = unique_ids(candidates, root)
    dicoms: list[DicomImage] = []
    images: list[InputImage] = []
    for path in candidates:
        try:
            image = read_image_file(path, ids[path])
        except NotAnImageError as error:  # a DICOMDIR or a report beside the images: left alone on purpose
            source.ignored.append({"path": str(path), "reason": error.message})
            continue
        if isinstance(image, str):
            source.skipped.append({"path": str(path), "reason": image})
        elif isinstance(image, list):
            # A single-frame file's pixels are read again when segmented; a multi-frame file's are kept
            # (reading the whole file again for each of its frames would cost frames^2 decodes).
            dicoms += [image[0].without_pixels()] if len(image) == 1 and image[0].frame_number is None else image
        elif isinstance(image, NiftiVolume):
            source.nifti[ids[path]] = image
        else:
            images.append(image)
    stacks = dicom_stacks(dicoms)
    dicom_stack_names = stack_names(stacks, stack)
    for name, members in zip(dicom_stack_names, stacks, strict=True):
        positions = plane_positions(members) or [None] * len(members)
        source.images += [dicom_input(image, frame_id(ids[image.path], image), name, position)
                          for image, position in zip(members, positions, strict=True)]
    taken = set(dicom_stack_names)
    series, series_notes = single_slice_series(source.nifti)
    source.notes += series_notes
    stack_of: dict[str, str] = {}
    for names in series:
        stack_of.update(dict.fromkeys(names, unique_name(safe_name(source.nifti[names[0]].path.parent.name), taken)))
    for name, volume in source.nifti.items():
        stack_name = stack_of.get(name) or unique_name(name, taken)
        phases, phase_notes = acdc_phases_of_cine(volume)
        frame, phase, frame_notes = acdc_frame_phase(volume)
        source.images += nifti_inputs(volume, name, stack=stack_name, phases=phases, frame=frame, phase=phase)
        source.notes += volume.notes + phase_notes + frame_notes
    source.images += images
    make_ids_unique(source.images)
    return source


def is_label_volume(path: Path) -> bool:
    """Whether a file is a NIfTI label volume by its name (``*_gt.nii[.gz]``, as ACDC's ground truths)."""
    return is_nifti(path) and GROUND_TRUTH_NAME.search(nifti_stem(path)) is not None


def stack_names(stacks: Sequence[Sequence[DicomImage]], default: str) -> list[str]:
    """Names of the DICOM stacks of one folder: ``default`` for a single stack; else the name of the
    folder holding each stack's files (a patient's folder, say), numbered ``-stackN`` where several
    stacks share it."""
    if len(stacks) == 1:
        return [default]
    folders = [safe_name(Path(os.path.commonpath([image.path.parent for image in members])).name)
               for members in stacks]
    counts, seen, taken = Counter(folders), Counter(), set()
    names = []
    for folder in folders:
        seen[folder] += 1
        names.append(unique_name(folder if counts[folder] == 1 else f"{folder}-stack{seen[folder]}", taken))
    return names


def companion_reason(path: Path, nifti_stems: set[tuple[Path, str]]) -> str | None:
    """Why a file that is no image to segment is left alone: a label (:func:`label_file_reason`), a
    table (a manifest, Sunnybrook's ``link.csv``), or a sidecar (``.json``, ``.bval``, ``.bvec``, as
    dcm2niix writes) of a NIfTI image beside it, or the ``Info.cfg`` of ACDC NIfTI images beside it (their
    phases are read from it); None for others."""
    reason = label_file_reason(path)
    if reason:
        return reason
    if path.suffix.lower() == ".csv":
        return "a table (a data set's manifest or link file), not an image"
    if path.suffix.lower() in SIDECAR_SUFFIXES and (path.parent, path.stem) in nifti_stems:
        return f"the sidecar of the NIfTI image {path.stem}"
    if path.name == "Info.cfg" and any(folder == path.parent for folder, _ in nifti_stems):
        # The folder's own name, also where it was given as "." or a relative path.
        if any(folder == path.parent and stem.startswith(f"{folder.absolute().name}_") and
               (ACDC_CINE_NAME.match(stem) or acdc.FRAME_FILE.match(f"{stem}.nii")) for folder, stem in nifti_stems):
            return "the ACDC patient information beside its NIfTI images (their phases are read from it)"
        return "an ACDC patient information file, not used: the NIfTI images beside it are not its patient's"
    return None


def label_file_reason(path: Path) -> str | None:
    """Why a file of a supported layout's labels is not segmented: an RVSC or Sunnybrook contour file,
    an RVSC list file, a contour-map image (``<stem>-icontour-manual.png``) or a ``*_gt`` label volume."""
    name, suffix = path.name.lower(), path.suffix.lower()
    if suffix == ".txt" and "contour" in name:
        return "a contour file"
    if suffix == ".txt" and name.endswith("list.txt"):
        return "a patient's list file"
    if suffix in IMAGE_SUFFIXES and MAP_NAME.fullmatch(path.stem):
        return "a contour map (an expert label image), not an image to segment"
    if is_label_volume(path):
        return LABEL_VOLUME_REASON
    return None


def read_image_file(path: Path, image_id: str) -> InputImage | list[DicomImage] | NiftiVolume | str:
    """A DICOM (as its frames, :func:`~rvseg.data.dicom.read_dicom_frames`), PNG/JPEG or NIfTI image, or
    the reason it is not read; raises :class:`~rvseg.data.dicom.NotAnImageError` for a DICOM object that
    is no image (a DICOMDIR, a report)."""
    try:
        if is_nifti(path):
            return read_nifti(path)
        if is_dicom(path):
            return read_dicom_frames(path)
        if path.suffix.lower() in IMAGE_SUFFIXES:
            pixels = read_gray(path, ReadReport("image", ()), skip_bad=False)
            return InputImage(id=image_id, source=str(path), pixels=pixels, shape=pixels.shape)
    except NotAnImageError:
        raise
    except DataError as error:
        return error.message
    return "not a DICOM, PNG/JPEG or NIfTI image"


def frame_id(file_id: str, image: DicomImage) -> str:
    """The output id of a DICOM image: its file's id, with ``-fNNNN`` for a frame of a multi-frame file."""
    return file_id if image.frame_number is None else f"{file_id}-f{image.frame_number:04d}"


def dicom_input(image: DicomImage, image_id: str, stack: str, position_mm: float | None) -> InputImage:
    match = RVSC_FRAME_ID.fullmatch(image_id)
    return InputImage(id=image_id, source=str(image.path), pixels=image.pixels, shape=image.shape, stack=stack,
                      spacing_mm=image.spacing_mm, slice_location=image.slice_location, position_mm=position_mm,
                      trigger_time=image.trigger_time, thickness_mm=image.slice_thickness_mm,
                      frame=int(match.group(1)) if match else image.instance_number)


def rvsc_source(root: Path, files: Sequence[Path]) -> Source:
    """The images of the RVSC patient folders in ``root``: each patient's ``PNNdicom/`` folder, one stack
    per patient. Every other file below ``root`` (contour files, list files, anything else) is listed
    as ignored, with why.

    Args:
        root: the folder given.
        files: every file below it (:func:`source_files`).
    """
    source = Source("rvsc", [], [])
    # A patient in two sets would give every output file two sources: refused, as the reader does.
    folders = unique_folders(patient_folders(root), patient_id, ReadReport("rvsc", ()), skip_bad=False)
    read = set()
    for folder in folders:
        patient = patient_id(folder)
        found = sorted(path for path in dicom_folder(folder).glob("*")
                       if path.is_file() and not path.name.startswith("."))
        read.update(found)
        source.extend(read_files(found, stack=patient))
    source.ignored += [{"path": str(path), "reason": rvsc_ignored_reason(path)} for path in files if path not in read]
    return source


def rvsc_ignored_reason(path: Path) -> str:
    """Why a file below an RVSC root is not segmented."""
    return label_file_reason(path) or "not in an RVSC patient's PNNdicom folder (give it on its own to segment it)"


def acdc_source(root: Path, files: Sequence[Path]) -> Source:
    """The frame volumes of the ACDC patient folders in ``root`` (module docstring): each patient one
    stack, its frames' phases from its ``Info.cfg``.

    Args:
        root: the folder given.
        files: every file below it (:func:`source_files`): those not read are listed as ignored, with
            why, so that nothing is left out unsaid.
    """
    report = ReadReport("acdc", acdc.LABELS)
    source = Source("acdc", [], report.skipped)
    read: set[Path] = set()
    folders = acdc.folders_with_frames(root)
    for folder in unique_folders(folders, lambda folder: folder.name, report, skip_bad=False):
        read.add(folder / "Info.cfg")
        phases = acdc.read_phases(folder / "Info.cfg", report, skip_bad=True)
        frames = {frame: path for (frame, is_gt), path in acdc.frame_files(folder, report).items() if not is_gt}
        source.notes += acdc.phase_frames_missing(folder, phases, set(frames))
        for frame, path in sorted(frames.items()):
            read.add(path)
            try:
                volume = acdc.read_frame_volume(path)
            except DataError as error:
                report.bad_file(path, error.message, skip_bad=True)
                continue
            name = safe_name(nifti_stem(path))
            source.nifti[name] = volume
            source.notes += volume.notes
            source.images += nifti_inputs(volume, name, stack=folder.name, prefix=f"{folder.name}-frame{frame:02d}",
                                          frame=frame, phase=phases.get(frame, ""))
    source.notes += report.notes
    skipped = {item["path"] for item in source.skipped}
    source.ignored = [{"path": str(path), "reason": acdc_ignored_reason(path)} for path in files
                      if path not in read and str(path) not in skipped]
    return source


def acdc_ignored_reason(path: Path) -> str:
    """Why a file below an ACDC root is not segmented."""
    if is_label_volume(path):
        return LABEL_VOLUME_REASON
    if is_nifti(path) and ACDC_CINE_NAME.search(nifti_stem(path)):
        return "the whole cine of an ACDC patient: give this file itself to segment every frame"
    if path.name == "Info.cfg":
        return "the patient information of a folder without frame volumes"
    if acdc.FRAME_FILE.match(path.name):
        return "a frame volume not read: a second copy of one (.nii beside .nii.gz), or not named after its folder"
    return "not an ACDC patient's frame volume (give it on its own to segment it)"


def acdc_phases_of_cine(volume: NiftiVolume) -> tuple[dict[int, str], list[str]]:
    """For an ACDC cine (``patientNNN_4d.nii.gz``) beside its ``Info.cfg``: (frame number -> ED / ES,
    notes on what could not be used); ({}, []) for other volumes."""
    stem = nifti_stem(volume.path)
    if volume.data.ndim != 4 or not ACDC_CINE_NAME.search(stem) or stem != f"{volume.path.absolute().parent.name}_4d":
        return {}, []
    report = ReadReport("acdc", acdc.LABELS)
    phases = acdc.read_phases(volume.path.parent / "Info.cfg", report, skip_bad=True)
    notes = [f"{item['path']}: {item['reason']}; the phases of {volume.path.name} are inferred"
             for item in report.skipped]
    notes += [f"{volume.path}: Info.cfg gives {phase} as frame {frame}, which the cine's {volume.n_frames} frames "
              "do not have" for frame, phase in phases.items() if not 1 <= frame <= volume.n_frames]
    phases = {frame: phase for frame, phase in phases.items() if 1 <= frame <= volume.n_frames}
    if phases and set(phases.values()) != {"ED", "ES"}:  # one phase usable: both come from the volume curve
        notes.append(f"{volume.path.parent / 'Info.cfg'}: gives a frame of the cine only for "
                     f"{', '.join(sorted(set(phases.values())))}; the phases of {volume.path.name} are inferred")
        return {}, notes
    return phases, notes


def acdc_frame_phase(volume: NiftiVolume) -> tuple[int | None, str, list[str]]:
    """For an ACDC frame file (``patientNNN_frameFF.nii.gz``, 3D) beside its patient's ``Info.cfg``: (FF,
    ED / ES / "" from the Info.cfg, notes on an Info.cfg that could not be used or names FF neither ED nor
    ES); (None, "", []) for other volumes, and no note where there is no Info.cfg of the patient (a frame
    file copied out of its folder)."""
    match = acdc.FRAME_FILE.match(volume.path.name)
    info = volume.path.parent / "Info.cfg"
    if volume.data.ndim != 3 or not match or match["gt"]:
        return None, "", []
    frame = int(match["frame"])
    # Only the patient's own Info.cfg: a folder of several patients' frames holds at most one of theirs.
    if not info.is_file() or volume.path.absolute().parent.name != match["patient"]:
        return frame, "", []
    report = ReadReport("acdc", acdc.LABELS)
    phases = acdc.read_phases(info, report, skip_bad=True)
    notes = [f"{item['path']}: {item['reason']}; the phase of {volume.path.name} is unknown" for item in report.skipped]
    if phases and frame not in phases:
        named = ", ".join(f"{phase} as frame {number}" for number, phase in sorted(phases.items()))
        notes.append(f"{info}: gives {named}, not frame {frame}: the volume of {volume.path.name} is neither an "
                     "EDV nor an ESV")
    return frame, phases.get(frame, ""), notes


def nifti_inputs(volume: NiftiVolume, name: str, stack: str, *, prefix: str | None = None,
                 frame: int | None = None, phase: str = "", phases: dict[int, str] | None = None) -> list[InputImage]:
    """The slices of a NIfTI volume as inputs (ids as in the module docstring; ``prefix`` defaults to
    ``name``). ``frame`` and ``phase`` are those of a 3D volume; a 4D cine's frames are numbered from 1,
    with ``phases`` (frame number -> ED / ES) where known."""
    prefix = prefix or name
    locations = slice_locations(volume.affine, volume.data.shape[2])
    cine = volume.data.ndim == 4
    phases = phases or {}
    images = []
    for t in range(volume.n_frames):
        for z, location in enumerate(locations):
            index = (z, t) if cine else (z,)
            pixels = volume.data[(slice(None), slice(None), *index)]  # a view: the volume is held once
            images.append(InputImage(
                id=f"{prefix}-frame{t + 1:02d}-slice{z:02d}" if cine else f"{prefix}-slice{z:02d}",
                source=str(volume.path), pixels=pixels, shape=pixels.shape, stack=stack,
                spacing_mm=volume.spacing_mm, slice_location=location, position_mm=location,
                thickness_mm=volume.zooms[2] if len(volume.zooms) > 2 and volume.zooms[2] > 0 else None,
                frame=t + 1 if cine else frame, phase=phases.get(t + 1, "") if cine else phase, slice_number=z,
                volume=name, volume_index=index))
    return images


def make_ids_unique(images: Sequence[InputImage]) -> None:
    """Give an image whose id an earlier image has (a NIfTI slice id equal to another file's stem) a
    ``-2``, ``-3``... suffix, so that no output file overwrites another."""
    taken: set[str] = set()
    for image in images:
        image.id = unique_name(image.id, taken)


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name-2``, ``name-3``... if taken; the result is added to ``taken``."""
    unique, count = name, 1
    while unique in taken:
        count += 1
        unique = f"{name}-{count}"
    taken.add(unique)
    return unique


def unique_ids(files: Sequence[Path], root: Path | None) -> dict[Path, str]:
    """File -> output id: its stem, or, when stems repeat, its path below ``root`` joined by ``_``.

    Names that still collide (``scan.png`` beside ``scan.dcm``) get ``-2``, ``-3``... in file order,
    so that no output overwrites another.
    """
    stems = Counter(safe_name(nifti_stem(path)) for path in files)
    ids: dict[Path, str] = {}
    taken: set[str] = set()
    for path in files:
        name = safe_name(nifti_stem(path))
        if stems[name] > 1 and root is not None:
            relative = path.relative_to(root)
            name = safe_name("_".join((*relative.parts[:-1], nifti_stem(relative))))
        ids[path] = unique_name(name, taken)
    return ids


def safe_name(name: str) -> str:
    """``name`` with every character other than letters, digits, ``.``, ``_`` and ``-`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "image"


def prepared_images(data: PreparedDataset) -> tuple[list[InputImage], list[str]]:
    """The samples of a prepared data set as inputs, with their original size and spacing, and notes.

    As for files read (:func:`~rvseg.data.dicom.plane_positions`), every image of a stack has a plane
    position or none does (:func:`~rvseg.volumes.partly_positioned`)."""
    positions = [finite_or_none(row.get("position_mm")) for row in data.rows]
    partial = partly_positioned([row["patient"] for row in data.rows], positions)
    images = []
    for index, row in enumerate(data.rows):
        height, width = data.extent(index)
        shape = (int(row["orig_height"]), int(row["orig_width"]))
        spacing = data.spacing(index)
        if spacing is not None:
            spacing = (spacing[0] * height / shape[0], spacing[1] * width / shape[1])
        images.append(InputImage(
            id=safe_name(row["id"]), source=row.get("source_image", "") or str(data.root), prepared=True,
            pixels=data.images[index, 0, :height, :width], shape=shape, stack=row["patient"], spacing_mm=spacing,
            slice_location=float(row["slice_location"]) if row.get("slice_location") else None,
            position_mm=positions[index] if row["patient"] not in partial else None,
            thickness_mm=finite_or_none(row.get("slice_thickness_mm")),
            frame=int(row["frame"]) if row.get("frame") else None,
            phase=row["phase"] if row["phase"] in ("ED", "ES") else "",
            slice_number=finite_or_none(row.get("slice"))))
    return images, partly_positioned_notes(partial)

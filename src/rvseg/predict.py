"""``rvseg predict``: segment new images with one or more checkpoints, write masks, contours and volumes.

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
  volumes) and converter sidecars beside a NIfTI image (``.json``, ``.bval``, ``.bvec`` of its stem)
  are ignored;
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

**Output folder** ``PRED/`` (written to a temporary sibling and renamed into place):

- ``masks/<id>.png``: the predicted mask, 0 / 255, at the original image's size; with several
  labels, one ``masks/<id>-<label>.png`` per label.
- ``masks/<volume>.nii.gz`` for each NIfTI image read: its slices' masks, uint8, put back into the
  image's geometry (:func:`~rvseg.data.nifti.save_like`): 0 / 1 for one label; one label map in ACDC's
  values (rv 1, myo 2, lv 3, as the ACDC ground truths) for a model of ACDC labels; else one 0 / 1
  file ``<volume>-<label>.nii.gz`` per label (endo and epi overlap). A slice's image id is
  ``<volume>-sliceZZ`` (a 4D cine: ``<volume>-frameTT-sliceZZ``, TT counted from 1; an ACDC frame:
  ``patientNNN-frameFF-sliceZZ``, the id of the same sample in an ACDC prepared set).
- ``overlays/<id>.png``: the image with the boundary of each label's mask in colour (endo yellow,
  epi cyan).
- ``contours/<id>-icontour-auto.txt`` (label ``endo``) and ``<id>-ocontour-auto.txt`` (``epi``):
  the RVSC submission format, one ``x y`` line per point in the pixel coordinates of the original
  image, the boundary of the largest region (:func:`~rvseg.data.contours.mask_to_contour`); RVSC
  frames have ids ``PNN-FFFF``, so the files are named ``PNN-FFFF-icontour-auto.txt``. Other labels
  give ``<id>-<label>-contour-auto.txt``. An empty mask gives no file.
- ``predictions.csv``: one row per image: id, source, stack, slice location, trigger time, phase,
  size, spacing, and per label the area in pixels and mm^2 and the contour file.
- ``volumes.csv`` (when images have a pixel spacing): rows of ``level`` ``image`` (RV cavity area
  in mm^2 per slice and frame, with its phase), ``phase`` (the ED or ES volume in mL of a stack and
  the slices it sums) and ``stack`` (EDV, ESV, EF), computed by :mod:`rvseg.volumes` from the RV
  cavity label (``endo``, or ACDC's ``rv``): volumes need two or more slice locations, ED is the
  earliest frame of each slice and ES the frame of minimum total predicted volume (or of minimum
  area per slice when slices have different frame counts). For DICOMs the slice spacing is
  measured between the planes' ImagePositionPatient along their normal, not between SliceLocation
  values (:func:`~rvseg.data.dicom.plane_positions`); a prepared data set has only the latter.
- ``skipped.csv`` and ``ignored.csv`` (``path, reason``), and ``summary.json`` (with ``notes``: what
  the reader of the numbers should know, e.g. non-finite NIfTI voxels replaced, a stack with one
  slice position and so no volume, or NIfTI images segmented by a model trained on another layout,
  whose orientation may differ).

Masks are post-processed by :mod:`rvseg.postprocess` (``postprocess``): by default ``stack``, one
region per label chosen through the slices of each stack at one instant (:func:`stack_instants`),
else ``largest`` per image or ``none``; holes filled. With any rule but ``none`` a written contour,
filled again, gives back the mask.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from skimage.io import imsave

from rvseg import __version__
from rvseg.data import acdc
from rvseg.data.contours import mask_to_contour, write_contour_file
from rvseg.data.dataset import load_dataset
from rvseg.data.dicom import DicomImage, dicom_stacks, is_dicom, plane_positions, read_dicom
from rvseg.data.folders import unique_folders
from rvseg.data.nifti import (
    NiftiVolume,
    is_nifti,
    nifti_stem,
    read_nifti,
    save_like,
    single_slice_series,
    slice_locations,
)
from rvseg.data.pngpairs import read_gray
from rvseg.data.rvsc import looks_like_rvsc, patient_folders, patient_id
from rvseg.data.sample import ReadReport
from rvseg.errors import DataError
from rvseg.inference import Predictor, extent, to_original_geometry
from rvseg.io import atomic_folder, check_output_folder, checksum, json_safe, write_csv, write_json
from rvseg.postprocess import check_rule, finite, postprocess_scores, stack_positions
from rvseg.report.figures import overlay_image
from rvseg.volumes import (
    SliceArea,
    area_mm2,
    assign_phases,
    by_stack,
    cavity_label,
    chamber,
    frames_by_slice,
    no_cavity_note,
    stack_volumes,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Contour file kind of the RVSC labels (``PNN-FFFF-icontour-auto.txt``).
CONTOUR_KIND = {"endo": "i", "epi": "o"}
RVSC_FRAME_ID = re.compile(r"P\d+-(\d+)")
#: NIfTI files of label volumes (ACDC's ``patientNNN_frameFF_gt.nii.gz``), which are not images to segment.
GROUND_TRUTH_NAME = re.compile(r"_gt$", re.IGNORECASE)
#: An ACDC patient's whole cine, ``patientNNN_4d.nii.gz``.
ACDC_CINE_NAME = re.compile(r"^patient\d+_4d$", re.IGNORECASE)
#: Files that converters such as dcm2niix write beside a NIfTI image, with its stem.
SIDECAR_SUFFIXES = (".json", ".bval", ".bvec")
VOLUME_FIELDS = ("level", "stack", "id", "slice_location", "trigger_time", "frame", "phase", "area_mm2", "slices",
                 "slice_spacing_mm", "volume_ml", "ed_volume_ml", "es_volume_ml", "ef_percent", "es_rule")


@dataclass
class InputImage:
    """One image to segment.

    Attributes:
        id: unique name of its outputs (file stem, made unique within the source).
        source: the file read (or, for a prepared data set, the sample's source image).
        pixels: float32 (h, w): raw intensities, or for a prepared data set its normalised image.
        shape: (H, W) of the original image, the geometry of every output.
        prepared: whether ``pixels`` are a prepared data set's (normalised, maybe resized) image.
        stack: the patient or series it belongs to ("" when unknown).
        spacing_mm: (row, column) pixel spacing in mm of the original image, or None.
        slice_location: the slice's location as the source gives it (DICOM SliceLocation; for NIfTI, the
            position along the slice normal from the affine), or None.
        position_mm: where the slice lies along its stack's normal (mm, from ImagePositionPatient;
            :func:`~rvseg.data.dicom.plane_positions`), or None: what slice spacings are measured on.
        trigger_time: ms after the R wave, or None.
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
    pixels: np.ndarray
    shape: tuple[int, int]
    prepared: bool = False
    stack: str = ""
    spacing_mm: tuple[float, float] | None = None
    slice_location: float | None = None
    position_mm: float | None = None
    trigger_time: float | None = None
    frame: int | None = None
    phase: str = ""
    slice_number: float | None = None
    volume: str = ""
    volume_index: tuple[int, ...] = ()


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
    """

    kind: str
    images: list[InputImage]
    skipped: list[dict[str, str]]
    ignored: list[dict[str, str]] = field(default_factory=list)
    nifti: dict[str, NiftiVolume] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def extend(self, other: Source) -> None:
        """Add everything ``other`` found (its kind aside)."""
        self.images += other.images
        self.skipped += other.skipped
        self.ignored += other.ignored
        self.nifti.update(other.nifti)
        self.notes += other.notes


def predict(checkpoints: Sequence[str | Path], src: str | Path, out: str | Path, *, ensemble: str = "mean",
            tta: bool = False, postprocess: str = "stack", batch_size: int = 16, device: str = "cpu",
            force: bool = False) -> dict:
    """Segment every image of ``src`` and write the output folder (module docstring).

    Args:
        checkpoints: checkpoint files or run folders; several form an ensemble.
        src: a DICOM, PNG/JPEG or NIfTI file, a folder of them, an RVSC or ACDC patient folder, or a
            prepared data set.
        out: the output folder.
        ensemble: ``mean`` or ``vote`` (see :mod:`rvseg.inference`).
        tta: flip test-time augmentation.
        postprocess: ``stack``, ``largest`` or ``none`` (:mod:`rvseg.postprocess`; module docstring).
        batch_size: images per forward pass.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        force: replace an existing non-empty ``out``.

    Returns:
        the summary (also ``out/summary.json``): counts, ``skipped`` (``{"path", "reason"}`` each),
        ``volumes`` (stack -> EDV, ESV, EF...), settings and the output files.

    Raises:
        DataError: ``src`` is missing, is a single file that is not an image, or holds no readable
            image; a checkpoint cannot be read; ``out`` is not empty.
        ConfigError: an invalid option, or checkpoints that cannot be combined.
    """
    out = Path(out)
    check_output_folder(out, force)
    check_rule(postprocess)
    predictor = Predictor.from_checkpoints(checkpoints, ensemble=ensemble, tta=tta, batch_size=batch_size,
                                           device=device)
    source = read_source(Path(src), exclude=out)
    with atomic_folder(out) as tmp:
        nifti_masks = NiftiMasks(source.nifti, len(predictor.labels))
        records = segment_and_write(predictor, source.images, tmp, postprocess, nifti_masks)
        mask_files, mask_notes = nifti_masks.write(tmp / "masks", predictor.labels)
        volumes, notes = write_volumes(tmp / "volumes.csv", source.images, records, predictor.labels)
        notes = [*source.notes, *orientation_notes(source, predictor), *mask_notes, *notes]
        write_csv(tmp / "predictions.csv", records)
        write_csv(tmp / "skipped.csv", source.skipped, fieldnames=("path", "reason"))
        write_csv(tmp / "ignored.csv", source.ignored, fieldnames=("path", "reason"))
        summary = json_safe({
            "out": str(out), "source": str(src), "source_kind": source.kind, "n_images": len(records),
            "n_skipped": len(source.skipped), "skipped": source.skipped, "n_ignored": len(source.ignored),
            "ignored": source.ignored, "labels": predictor.labels,
            "checkpoints": [str(path) for path in predictor.checkpoints],
            "checkpoint_checksums": [checksum(path) for path in predictor.checkpoints],
            "ensemble": ensemble, "tta": tta, "postprocess": postprocess, "model_prepare": predictor.prepare,
            "chamber": chamber(predictor.prepare.get("format")), "volumes": {item["stack"]: item for item in volumes},
            "nifti_masks": mask_files, "notes": notes,
            "rvseg_version": __version__,
            "files": {name: str(out / name) for name in ("masks", "overlays", "contours", "predictions.csv",
                                                          "volumes.csv", "skipped.csv", "ignored.csv",
                                                          "summary.json")
                      if (tmp / name).exists() or name == "summary.json"},
        })
        write_json(tmp / "summary.json", summary)
    return summary


# ---------------------------------------------------------------- reading the source


def read_source(src: Path, exclude: Path | None = None) -> Source:
    """Find and read the images of ``src`` (module docstring), in stack / slice / time order.

    Args:
        src: the source.
        exclude: a folder whose files are not read even when it lies inside ``src`` (the output
            folder: a rerun must not segment the masks and overlays of the previous run).
    """
    if not src.exists():
        raise DataError("no such file or folder", src)
    if src.is_file():
        source = read_files([src], stack=safe_name(nifti_stem(src)), kind="file")
        if source.skipped or source.ignored:
            raise DataError((source.skipped or source.ignored)[0]["reason"], src)
        source.kind = "nifti" if is_nifti(src) else "dicom" if is_dicom(src) else "image"
        return source
    if (src / "dataset.json").is_file():
        return Source("prepared", prepared_images(src), [])
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
    if not source.images:
        raise DataError(f"holds no readable DICOM, PNG, JPEG or NIfTI image ({len(source.skipped)} other file(s))",
                        src)
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
        image = read_image_file(path, ids[path])
        if isinstance(image, str):
            source.skipped.append({"path": str(path), "reason": image})
        elif isinstance(image, DicomImage):
            dicoms.append(image)
        elif isinstance(image, NiftiVolume):
            source.nifti[ids[path]] = image
        else:
            images.append(image)
    stacks = dicom_stacks(dicoms)
    dicom_stack_names = [stack if len(stacks) == 1 else f"{stack}-stack{number}"
                         for number in range(1, len(stacks) + 1)]
    for name, members in zip(dicom_stack_names, stacks, strict=True):
        positions = plane_positions(members) or [None] * len(members)
        source.images += [dicom_input(image, ids[image.path], name, position)
                          for image, position in zip(members, positions, strict=True)]
    taken = set(dicom_stack_names)
    series, series_notes = single_slice_series(source.nifti)
    source.notes += series_notes
    stack_of = {name: stack for names in series
                for stack in [unique_name(safe_name(source.nifti[names[0]].path.parent.name), taken)]
                for name in names}
    for name, volume in source.nifti.items():
        stack_name = stack_of.get(name) or unique_name(name, taken)
        phases, phase_notes = acdc_phases_of_cine(volume)
        source.images += nifti_inputs(volume, name, stack=stack_name, phases=phases)
        source.notes += volume.notes + phase_notes
    source.images += images
    make_ids_unique(source.images)
    return source


def companion_reason(path: Path, nifti_stems: set[tuple[Path, str]]) -> str | None:
    """Why a file that is no image to segment is left alone: a ``*_gt`` label volume, or a sidecar
    (``.json``, ``.bval``, ``.bvec``, as dcm2niix writes) of a NIfTI image beside it; None for others."""
    if is_nifti(path) and GROUND_TRUTH_NAME.search(nifti_stem(path)):
        return "a label volume (its name ends in _gt), not an image to segment"
    if path.suffix.lower() in SIDECAR_SUFFIXES and (path.parent, path.stem) in nifti_stems:
        return f"the sidecar of the NIfTI image {path.stem}"
    return None


def read_image_file(path: Path, image_id: str) -> InputImage | DicomImage | NiftiVolume | str:
    """A DICOM (as :class:`DicomImage`), PNG/JPEG or NIfTI image, or the reason it is not read."""
    try:
        if is_nifti(path):
            return read_nifti(path)
        if is_dicom(path):
            return read_dicom(path)
        if path.suffix.lower() in IMAGE_SUFFIXES:
            pixels = read_gray(path, ReadReport("image", ()), skip_bad=False)
            return InputImage(id=image_id, source=str(path), pixels=pixels, shape=pixels.shape)
    except DataError as error:
        return error.message
    return "not a DICOM (no 'DICM' marker after the 128-byte preamble), PNG/JPEG or NIfTI image"


def dicom_input(image: DicomImage, image_id: str, stack: str, position_mm: float | None) -> InputImage:
    match = RVSC_FRAME_ID.fullmatch(image_id)
    return InputImage(id=image_id, source=str(image.path), pixels=image.pixels, shape=image.shape, stack=stack,
                      spacing_mm=image.spacing_mm, slice_location=image.slice_location, position_mm=position_mm,
                      trigger_time=image.trigger_time,
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
        found = sorted(path for path in (folder / f"{patient}dicom").glob("*")
                       if path.is_file() and not path.name.startswith("."))
        read.update(found)
        source.extend(read_files(found, stack=patient))
    source.ignored += [{"path": str(path), "reason": rvsc_ignored_reason(path)} for path in files if path not in read]
    return source


def rvsc_ignored_reason(path: Path) -> str:
    """Why a file below an RVSC root is not segmented."""
    if path.suffix.lower() == ".txt" and "contour" in path.name.lower():
        return "a contour file"
    if path.suffix.lower() == ".txt" and path.name.lower().endswith("list.txt"):
        return "a patient's list file"
    return "not in an RVSC patient's PNNdicom folder (give it on its own to segment it)"


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
    folders = [folder for folder in acdc.patient_folders(root) if acdc.frame_files(folder)]
    for folder in unique_folders(folders, lambda folder: folder.name, report, skip_bad=False):
        read.add(folder / "Info.cfg")
        phases = acdc.read_phases(folder / "Info.cfg", report, skip_bad=True)
        frames = {frame: path for (frame, is_gt), path in acdc.frame_files(folder).items() if not is_gt}
        source.notes += [f"{folder.name}: Info.cfg gives {phase} as frame {frame}, which has no frame volume "
                         f"({folder.name}_frame{frame:02d}.nii.gz)" for frame, phase in phases.items()
                         if frame not in frames]
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
    skipped = {item["path"] for item in source.skipped}
    source.ignored = [{"path": str(path), "reason": acdc_ignored_reason(path)} for path in files
                      if path not in read and str(path) not in skipped]
    return source


def acdc_ignored_reason(path: Path) -> str:
    """Why a file below an ACDC root is not segmented."""
    if is_nifti(path) and GROUND_TRUTH_NAME.search(nifti_stem(path)):
        return "a label volume (its name ends in _gt), not an image to segment"
    if is_nifti(path) and ACDC_CINE_NAME.search(nifti_stem(path)):
        return "the whole cine of an ACDC patient: give this file itself to segment every frame"
    if path.name == "Info.cfg":
        return "the patient information of a folder without frame volumes"
    if acdc.FRAME_FILE.match(path.name):
        return "a second copy of a frame volume (.nii beside .nii.gz)"
    return "not an ACDC patient's frame volume (give it on its own to segment it)"


def acdc_phases_of_cine(volume: NiftiVolume) -> tuple[dict[int, str], list[str]]:
    """For an ACDC cine (``patientNNN_4d.nii.gz``) beside its ``Info.cfg``: (frame number -> ED / ES,
    notes on what could not be used); ({}, []) for other volumes."""
    if volume.data.ndim != 4 or not ACDC_CINE_NAME.search(nifti_stem(volume.path)):
        return {}, []
    report = ReadReport("acdc", acdc.LABELS)
    phases = acdc.read_phases(volume.path.parent / "Info.cfg", report, skip_bad=True)
    notes = [f"{item['path']}: {item['reason']}; the phases of {volume.path.name} are inferred"
             for item in report.skipped]
    notes += [f"{volume.path}: Info.cfg gives {phase} as frame {frame}, which the cine's {volume.n_frames} frames "
              "do not have" for frame, phase in phases.items() if not 1 <= frame <= volume.n_frames]
    return phases, notes


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


def prepared_images(root: Path) -> list[InputImage]:
    """The samples of a prepared data set as inputs, with their original size and spacing."""
    data = load_dataset(root)
    images = []
    for index, row in enumerate(data.rows):
        height, width = extent(data, index)
        shape = (int(row["orig_height"]), int(row["orig_width"]))
        spacing = data.spacing(index)
        if spacing is not None:
            spacing = (spacing[0] * height / shape[0], spacing[1] * width / shape[1])
        images.append(InputImage(
            id=safe_name(row["id"]), source=row.get("source_image", "") or str(root), prepared=True,
            pixels=data.images[index, 0, :height, :width], shape=shape, stack=row["patient"], spacing_mm=spacing,
            slice_location=float(row["slice_location"]) if row.get("slice_location") else None,
            frame=int(row["frame"]) if row.get("frame") else None,
            phase=row["phase"] if row["phase"] in ("ED", "ES") else "",
            slice_number=finite(row.get("slice"))))
    return images


# ---------------------------------------------------------------- segmenting and writing


def segment_and_write(predictor: Predictor, images: Sequence[InputImage], folder: Path,
                      postprocess: str = "stack", nifti_masks: NiftiMasks | None = None) -> list[dict]:
    """Segment the images, write their masks, overlays and contours; one record each, in image order.

    Under the ``stack`` post-processing the images of one stack at one instant (:func:`stack_instants`)
    are segmented in one unit (:func:`segmenting_units`). The masks of images cut from NIfTI images
    are also handed to ``nifti_masks``.
    """
    for name in ("masks", "overlays", "contours"):
        (folder / name).mkdir()
    instants, positions = stack_instants(images) if postprocess == "stack" else ([None] * len(images),) * 2
    records: list[dict | None] = [None] * len(images)
    for unit in segmenting_units(instants, predictor.batch_size):
        chunk = [images[i] for i in unit]
        inputs = [predictor.to_model_input(image.pixels) if image.prepared else predictor.preprocess(image.pixels)
                  for image in chunk]
        scores = list(predictor.score_maps(inputs, [image.shape for image in chunk]))
        masks = postprocess_scores(scores, postprocess, [instants[i] for i in unit], [positions[i] for i in unit])
        for i, image_masks in zip(unit, masks, strict=True):
            records[i] = write_image_outputs(folder, images[i], image_masks, predictor.labels)
            if nifti_masks is not None:
                nifti_masks.add(images[i], image_masks)
    return records


class NiftiMasks:
    """The masks of the images cut from NIfTI images, put back into their images' geometry.

    Args:
        volumes: the source's NIfTI images by name (:attr:`Source.nifti`).
        n_labels: L, the labels per mask.
    """

    def __init__(self, volumes: dict[str, NiftiVolume], n_labels: int):
        self.volumes = volumes
        # uint8 (L, I, J, K[, T]) per volume: a slice's (L, I, J) masks go to [:, :, :, *volume_index].
        self.arrays = {name: np.zeros((n_labels, *volume.data.shape), dtype=np.uint8)
                       for name, volume in volumes.items()}

    def add(self, image: InputImage, masks: np.ndarray) -> None:
        """Place an image's bool (L, H, W) masks, if it was cut from a volume."""
        if image.volume:
            self.arrays[image.volume][(slice(None),) * 3 + image.volume_index] = masks

    def write(self, folder: Path, labels: Sequence[str]) -> tuple[list[str], list[str]]:
        """Save each volume's masks in ``folder``: ``<volume>.nii.gz``, 0 / 1, for one label; for labels
        that are all ACDC's, one label map ``<volume>.nii.gz`` in ACDC's values (rv 1, myo 2, lv 3; where
        two masks overlap, the later label of ``labels`` wins, with a note); else one 0 / 1 file
        ``<volume>-<label>.nii.gz`` per label.

        Returns:
            (the file names, notes).
        """
        names, notes = [], []
        label_map = len(labels) > 1 and set(labels) <= set(acdc.LABEL_VALUES)
        for name, array in self.arrays.items():
            if label_map:
                values = np.zeros(array.shape[1:], dtype=np.uint8)
                overlap = 0
                for label, mask in zip(labels, array.astype(bool), strict=True):
                    overlap += np.count_nonzero(values[mask])
                    values[mask] = acdc.LABEL_VALUES[label]
                names.append(f"{name}.nii.gz")
                save_like(self.volumes[name], values, folder / names[-1])
                if overlap:
                    notes.append(f"{names[-1]}: {overlap} voxel(s) predicted as two labels keep the later one "
                                 f"of {', '.join(labels)}")
                continue
            for label, mask in zip(labels, array, strict=True):
                names.append(f"{name}.nii.gz" if len(labels) == 1 else f"{name}-{label}.nii.gz")
                save_like(self.volumes[name], mask, folder / names[-1])
        return names, notes


def stack_instants(images: Sequence[InputImage]) -> tuple[list, list]:
    """Each image's stack at one instant, and its position along that stack, or None for both.

    - A prepared data set's images: the instant is the phase (ED or ES) the data set gives; other
      phases are not grouped (one patient's unlabelled images may be any instants).
    - Other images (a cine read from DICOM): the instant is the frame's index in its slice's cycle order
      (:func:`~rvseg.volumes.frames_by_slice`) when the stack has two or more slice positions
      (:func:`slice_position`) and the same number of frames at each: the k-th frames of a cine's
      slices are one instant, as the ES rule of :mod:`rvseg.volumes` assumes.

    Positions are :func:`slice_position`, else the slice number, in one unit per instant
    (:func:`rvseg.postprocess.stack_positions`).
    """
    instant_of: dict[str, tuple] = {}  # by image id, unique within a source (ids name the output files)
    cines: dict[str, list[InputImage]] = defaultdict(list)
    for image in images:
        if image.prepared:
            if image.phase in ("ED", "ES"):
                instant_of[image.id] = (image.stack, image.phase)
        elif slice_position(image) is not None:
            cines[image.stack].append(image)
    for stack, members in cines.items():
        slices = list(frames_by_slice(members, slice_position).values())
        if len(slices) > 1 and len({len(frames) for frames in slices}) == 1:
            for frames in slices:
                instant_of.update({image.id: (stack, rank) for rank, image in enumerate(frames)})
    instants = [instant_of.get(image.id) for image in images]
    positions = stack_positions(instants, [slice_position(image) for image in images],
                                [image.slice_number for image in images])
    instants = [instant if position is not None else None for instant, position in zip(instants, positions,
                                                                                        strict=True)]
    return instants, positions


def segmenting_units(instants: Sequence, batch_size: int) -> list[list[int]]:
    """Indices of the images segmented together, about ``batch_size`` at a time: the images of one stack
    instant always in the same unit (the ``stack`` rule needs them together), then the others."""
    groups: dict = {}
    loose = []
    for index, instant in enumerate(instants):
        if instant is None:
            loose.append([index])
        else:
            groups.setdefault(instant, []).append(index)
    units, unit = [], []
    for members in [*groups.values(), *loose]:
        unit += members
        if len(unit) >= batch_size:
            units.append(unit)
            unit = []
    return [*units, unit] if unit else units


def write_image_outputs(folder: Path, image: InputImage, masks: np.ndarray, labels: Sequence[str]) -> dict:
    """Write one image's mask PNG(s), overlay and contour files; returns its ``predictions.csv`` row."""
    for label, mask in zip(labels, masks, strict=True):
        name = f"{image.id}.png" if len(labels) == 1 else f"{image.id}-{label}.png"
        imsave(folder / "masks" / name, (mask * 255).astype(np.uint8), check_contrast=False)
    display = to_original_geometry(image.pixels[None], image.shape)[0] if image.prepared else image.pixels
    imsave(folder / "overlays" / f"{image.id}.png", overlay_image(display, list(masks)), check_contrast=False)
    record = {"id": image.id, "source": image.source, "stack": image.stack,
              "slice_location": image.slice_location, "trigger_time": image.trigger_time, "frame": image.frame,
              "phase": image.phase, "height": image.shape[0], "width": image.shape[1],
              "spacing_mm": image.spacing_mm[0] if image.spacing_mm else None,
              "spacing_col_mm": image.spacing_mm[1] if image.spacing_mm else None}
    for label, mask in zip(labels, masks, strict=True):
        contour = mask_to_contour(mask)
        name = contour_file_name(image.id, label)
        if contour is not None:
            write_contour_file(folder / "contours" / name, contour)
        record[f"area_px_{label}"] = int(mask.sum())
        record[f"area_mm2_{label}"] = area_mm2(mask, image.spacing_mm) if image.spacing_mm else None
        record[f"contour_{label}"] = name if contour is not None else ""
    return record


def contour_file_name(image_id: str, label: str) -> str:
    """``<id>-icontour-auto.txt`` (endo), ``<id>-ocontour-auto.txt`` (epi), ``<id>-<label>-contour-auto.txt``."""
    kind = CONTOUR_KIND.get(label)
    return f"{image_id}-{kind}contour-auto.txt" if kind else f"{image_id}-{label}-contour-auto.txt"


def write_volumes(path: Path, images: Sequence[InputImage], records: list[dict],
                  labels: Sequence[str]) -> tuple[list[dict], list[str]]:
    """Areas, phases and volumes (module docstring) to ``volumes.csv``; fills in the records' phases.

    Returns:
        (one :meth:`~rvseg.volumes.StackVolumes.to_dict` per stack with a volume, notes).
    """
    label = cavity_label(labels)
    if label is None:
        return [], [no_cavity_note()]
    with_spacing = [(image, record) for image, record in zip(images, records, strict=True) if image.spacing_mm]
    if not with_spacing:
        return [], ["no areas in mm^2 or volumes: the images have no pixel spacing"]
    areas = [SliceArea(stack=image.stack, id=image.id, slice_location=slice_position(image),
                       area_mm2=record[f"area_mm2_{label}"], trigger_time=image.trigger_time,
                       frame=image.frame, phase=image.phase)
             for image, record in with_spacing if slice_position(image) is not None]
    areas, rules = assign_phases(areas)
    phase_of = {(area.stack, area.id): area.phase for area in areas}
    for image, record in with_spacing:
        record["phase"] = phase_of.get((image.stack, image.id), record["phase"])
    volumes = stack_volumes(areas, rules)
    notes = [f"{item.stack}: {note}" for item in volumes for note in item.notes]
    with_volume = {item.stack for item in volumes}
    for stack, members in by_stack(areas).items():
        if stack not in with_volume:
            notes.append(f"{stack}: one slice position, so no volume")
        elif rules[stack] != "given" and all(len(frames) == 1 for frames in frames_by_slice(members).values()):
            notes.append(f"{stack}: one frame per slice and no phase given: its volume is reported as the ED volume")
    if any(slice_position(image) is None for image, _ in with_spacing):
        notes.append("images without a slice location have areas but enter no volume")
    rows = [{"level": "image", "stack": image.stack, "id": image.id, "slice_location": image.slice_location,
             "trigger_time": image.trigger_time, "frame": image.frame, "phase": record["phase"],
             "area_mm2": record[f"area_mm2_{label}"]} for image, record in with_spacing]
    for item in volumes:
        phases = (("ED", item.ed_volume_ml, item.ed_slices), ("ES", item.es_volume_ml, item.es_slices))
        for phase, volume, slices in phases:
            if volume is not None:
                rows.append({"level": "phase", "stack": item.stack, "phase": phase, "slices": slices,
                             "slice_spacing_mm": item.slice_spacing_mm, "volume_ml": volume})
        rows.append({"level": "stack", "stack": item.stack, "slices": item.n_slices,
                     "slice_spacing_mm": item.slice_spacing_mm, "ed_volume_ml": item.ed_volume_ml,
                     "es_volume_ml": item.es_volume_ml, "ef_percent": item.ef_percent, "es_rule": item.es_rule})
    write_csv(path, rows, fieldnames=VOLUME_FIELDS)
    return [item.to_dict() for item in volumes], notes


def orientation_notes(source: Source, predictor: Predictor) -> list[str]:
    """A warning when NIfTI images are segmented by a model trained on another layout: NIfTI slices are
    read as stored (:mod:`rvseg.data.nifti`), which for a converted DICOM series (dcm2niix) is the DICOM
    image transposed and flipped, so the model may see its anatomy turned."""
    trained_on = predictor.prepare.get("format", "")
    if not source.nifti or trained_on in ("acdc", ""):
        return []
    return [f"NIfTI slices are segmented as stored (data[:, :, z], rows along the first axis); the model was "
            f"trained on {trained_on} images, whose orientation may differ (a dcm2niix conversion stores the DICOM "
            "image transposed and flipped): check the overlays"]


def slice_position(image: InputImage) -> float | None:
    """The slice position volumes are computed from: :attr:`InputImage.position_mm`, else the slice location.

    (:func:`~rvseg.data.dicom.plane_positions` gives a position to every image of a stack or to none.)
    """
    return image.position_mm if image.position_mm is not None else image.slice_location


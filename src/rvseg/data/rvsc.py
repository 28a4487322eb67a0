"""Reader for the RVSC-MICCAI 2012 native layout (DICOM frames + manual contour files).

Layout of one patient folder::

    patient09/
        P09dicom/P09-0020.dcm                                  one cine frame per file
        P09contours-manual/P09-0020-icontour-manual.txt         RV endocardium -> label "endo"
        P09contours-manual/P09-0020-ocontour-manual.txt         RV epicardium  -> label "epi"
        P09list.txt                                             optional list of the contour files

``P09list.txt`` holds Windows-style paths relative to the folder above the patient folder
(``.\\patient09\\P09contours-manual\\P09-0020-icontour-manual.txt``); entries relative to the patient
folder itself, or bare file names, are read too, and letter case is ignored. Contours are matched to
frames by the ``PNN-FFFF`` stem.

The challenge's test sets keep their contours in a separate tree beside the set, released after
the images; a patient folder without ``PNNcontours-manual/`` takes it from there::

    TestSet/Test1Set/patient17/{P17dicom/, P17list.txt}
    TestSet/Test1SetContours/P17contours-manual/P17-0020-icontour-manual.txt

so ``root`` may be a patient folder, a set folder of patient folders, or a folder holding set
folders (``TrainingSet/``, ``TestSet/Test1Set/``, ...; patient folders up to three levels down).
The list file of such a patient still names the in-tree path; its entries are looked up by file
name in the separate tree.

Phase: a frame is ED when it is the first frame of its slice (lowest TriggerTime among the slice's
frames, or TriggerTime 0 when it is the only frame of its slice read); any other annotated frame
is ES (RVSC annotates ED and ES only). Without a slice location or trigger times to decide, the
phase is ``unknown``.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from pathlib import Path, PureWindowsPath
from typing import NamedTuple

import numpy as np

from rvseg.data.contours import LABEL_OF_CONTOUR, polygon_to_mask, read_contour_file
from rvseg.data.dicom import DicomImage, plane_positions, read_dicom, read_dicom_header
from rvseg.data.folders import existing_ignoring_case, files_named, named_folders, unique_folders
from rvseg.data.sample import ReadReport, Sample, note_unnested
from rvseg.errors import DataError

LABELS = ("endo", "epi")

PATIENT_DIR_NAME = re.compile(r"patient(\d+)", re.IGNORECASE)
#: How far below ``root`` patient folders are looked for (``TestSet/Test1Set/patient17``).
PATIENT_SEARCH_DEPTH = 3
#: A set's separate contour tree: ``Test1Set`` -> ``Test1SetContours``.
CONTOUR_TREE_SUFFIX = "Contours"
DICOM_NAME = re.compile(r"(P\d+-\d+)\.dcm", re.IGNORECASE)
CONTOUR_NAME = re.compile(r"(P\d+-\d+)-([io])contour-manual\.txt", re.IGNORECASE)


class _Frame(NamedTuple):
    """What phase and size checks need from every frame, annotated or not."""

    path: Path
    shape: tuple[int, int]
    trigger_time: float | None
    slice_location: float | None


def looks_like_rvsc(root: str | Path) -> bool:
    """Whether ``root`` is an RVSC patient folder or holds one (folder names only, no file reads)."""
    root = Path(root)
    if not root.is_dir():
        return False
    return any(dicom_folder(folder).is_dir() for folder in patient_folders(root))


def read_rvsc(root: str | Path, *, skip_bad: bool = False) -> ReadReport:
    """Read RVSC patients in their native layout (module docstring).

    Args:
        root: a folder of ``patientNN/`` folders, or one ``patientNN`` folder.
        skip_bad: record bad files in ``report.skipped`` and carry on instead of raising.

    Returns:
        a :class:`ReadReport` with format ``"rvsc"`` and labels ``("endo", "epi")``. Each sample:
        id ``PNN-FFFF``, patient ``PNN``, image float32 (H, W), bool (H, W) masks, frame ``FFFF``,
        slice = slice location formatted with 2 decimals, phase ED/ES/unknown.

    Raises:
        DataError: ``root`` holds no patient folder, or (without ``skip_bad``) a bad file: corrupt
            DICOM, malformed contour, list entry outside the patient folder or missing, image size
            differing from the rest of the patient.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("RVSC folder does not exist or is not a folder", root)
    patient_dirs = patient_folders(root)
    if not patient_dirs:
        raise DataError(
            "no RVSC patient found: expected this folder to be a patientNN folder or to hold "
            "patientNN/ folders, each with PNNdicom/*.dcm and PNNcontours-manual/ or PNNlist.txt",
            root,
        )
    report = ReadReport(format="rvsc", labels=LABELS)
    for patient_dir in unique_folders(patient_dirs, patient_id, report, skip_bad):
        try:
            _read_patient(patient_dir, report, skip_bad)
        except DataError as error:  # an ambiguous folder name costs its patient only, with --skip-bad
            report.bad_file(error.path or patient_dir, error.message, skip_bad)
    report.samples.sort(key=lambda sample: sample.id)
    return report


def slice_key(slice_location: float | None) -> str:
    """The slice id of a sample: its location in mm with 2 decimals (``"22.45"``), or ``""``."""
    return "" if slice_location is None else f"{slice_location:.2f}"


def contour_masks(
    contour_files: dict[str, Path], image_shape: tuple[int, int], report: ReadReport, skip_bad: bool
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Fill each label's contour file into a bool (H, W) mask of the image's shape.

    A bad contour file goes through ``report.bad_file``; a contour too small to hold a pixel centre
    is listed in ``report.unfillable``. Either way its label is left out of the result.

    Returns:
        (label -> bool mask of shape ``image_shape``, label -> contour file path).
    """
    masks: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    for label, path in contour_files.items():
        try:
            points = read_contour_file(path, image_shape)
        except DataError as error:
            report.bad_file(path, error.message, skip_bad)
            continue
        mask = polygon_to_mask(points, image_shape)
        if not mask.any():
            report.unfillable.append(str(path))
            continue
        masks[label] = mask
        sources[label] = str(path)
    return masks, sources


def dicom_sample(sample_id: str, patient: str, image: DicomImage, masks: dict[str, np.ndarray],
                 sources: dict[str, str], frame: int, phase: str = "unknown") -> Sample:
    """The :class:`Sample` of a DICOM image and its filled masks; its slice is its location (2 decimals)."""
    return Sample(id=sample_id, patient=patient, image=image.pixels, masks=masks, spacing_mm=image.spacing_mm,
                  slice=slice_key(image.slice_location), frame=frame, phase=phase,
                  slice_location=image.slice_location, slice_thickness_mm=image.slice_thickness_mm,
                  position_mm=(plane_positions([image]) or [None])[0], sources={"image": str(image.path), **sources})


def dicom_folder(patient_dir: Path) -> Path:
    """A patient's ``PNNdicom`` folder (spelled in any letter case)."""
    return existing_ignoring_case(patient_dir / f"{patient_id(patient_dir)}dicom")


def patient_folders(root: Path) -> list[Path]:
    """``root`` itself when it is a patient folder, else the patient folders below it (up to
    :data:`PATIENT_SEARCH_DEPTH` levels)."""
    return named_folders(root, PATIENT_DIR_NAME, PATIENT_SEARCH_DEPTH)


def patient_id(patient_dir: Path) -> str:
    """``patient09`` -> ``P09`` (the prefix of the patient's folders and files)."""
    return "P" + PATIENT_DIR_NAME.fullmatch(patient_dir.name).group(1)  # type: ignore[union-attr]


def _read_patient(patient_dir: Path, report: ReadReport, skip_bad: bool) -> None:
    patient = patient_id(patient_dir)
    dicom_dir = dicom_folder(patient_dir)
    dicom_files = files_named(dicom_dir, "*.dcm")
    if not dicom_files:
        report.bad_file(dicom_dir, f"no DICOM frames: expected {patient}dicom/{patient}-FFFF.dcm files", skip_bad)
        return
    contours = _contours_by_stem(_contour_files(patient_dir, patient, report, skip_bad), report, skip_bad)
    frames, images = _read_frames(dicom_files, set(contours), report, skip_bad)
    _drop_odd_sized_frames(frames, images, patient, report, skip_bad)
    note_spacings(patient, {stem: image.spacing_mm for stem, image in images.items()}, report)
    frames_by_slice: dict[str, list[_Frame]] = defaultdict(list)
    for frame in frames.values():
        frames_by_slice[slice_key(frame.slice_location)].append(frame)

    dicom_stems = {path.stem.upper() for path in dicom_files}
    for stem, contour_files in sorted(contours.items()):
        if stem in dicom_stems and stem not in images:
            report.notes.append(f"{stem}: contours not used, the DICOM frame was skipped")
            continue
        if stem not in images:
            report.unmatched_contours.extend(str(path) for path in contour_files.values())
            continue
        image = images[stem]
        _note_missing_contours(stem, contour_files, report)
        masks, sources = contour_masks(contour_files, image.shape, report, skip_bad)
        if not masks:
            continue
        note_unnested(stem, masks, *LABELS, report)
        phase = _phase(frames[stem], frames_by_slice[slice_key(image.slice_location)])
        report.samples.append(dicom_sample(stem, patient, image, masks, sources, int(stem.split("-")[1]), phase))
    report.unmatched_images.extend(str(frames[stem].path) for stem in sorted(frames) if stem not in contours)


def note_spacings(patient: str, spacings: dict[str, tuple[float, float] | None], report: ReadReport) -> None:
    """Notes when a patient's annotated images lack a PixelSpacing that others have, or differ in it: mm
    metrics and volumes of those samples are then missing or on another scale."""
    known = Counter(spacing for spacing in spacings.values() if spacing is not None)
    missing = sorted(stem for stem, spacing in spacings.items() if spacing is None)
    if missing and known:
        report.notes.append(f"{patient}: {len(missing)} image(s) without PixelSpacing (first: {missing[0]}) while the "
                            f"others have one; their samples have no spacing in mm")
    if len(known) > 1:
        listed = ", ".join(f"{row:g} x {col:g} mm ({count})" for (row, col), count in known.most_common())
        report.notes.append(f"{patient}: the images have different pixel spacings: {listed}")


def _contour_dir(patient_dir: Path, patient: str) -> Path:
    """The patient's ``PNNcontours-manual`` folder: in the patient folder, or when that holds no contour
    file, in the set's separate tree (``Test1Set/patient17`` -> ``Test1SetContours/P17contours-manual``)."""
    in_tree, separate = _contour_dir_candidates(patient_dir, patient)
    # An empty in-tree folder (made before the test contours were released) does not hide them.
    return separate if separate.is_dir() and not files_named(in_tree, "*contour-manual.txt") else in_tree


def _contour_dir_candidates(patient_dir: Path, patient: str) -> tuple[Path, Path]:
    """Where a patient's contours may be: in its folder, and in the set's separate tree."""
    name, set_dir = f"{patient}contours-manual", patient_dir.parent
    separate = set_dir.parent / f"{set_dir.name}{CONTOUR_TREE_SUFFIX}" / name
    return existing_ignoring_case(patient_dir / name), existing_ignoring_case(separate)


def _contour_files(patient_dir: Path, patient: str, report: ReadReport, skip_bad: bool) -> list[Path]:
    list_file = existing_ignoring_case(patient_dir / f"{patient}list.txt")
    contour_dir = _contour_dir(patient_dir, patient)
    on_disk = files_named(contour_dir, "*contour-manual.txt")
    if not list_file.is_file():
        if not on_disk:
            looked = " or ".join(str(folder) for folder in _contour_dir_candidates(patient_dir, patient))
            report.notes.append(f"{patient}: no contour files and no {list_file.name} (looked in {looked}); "
                                "its images are not annotated")
        return on_disk
    listed = _listed_contour_files(list_file, patient_dir, contour_dir, report, skip_bad)
    # Compared as absolute paths: the list's entries are made absolute, the folder's files may be relative.
    unlisted = sorted(set(map(os.path.abspath, on_disk)) - set(map(os.path.abspath, listed)))
    if unlisted:
        report.notes.append(
            f"{list_file}: {len(unlisted)} contour file(s) in {contour_dir.name}/ are not listed and were not read "
            f"(first: {Path(unlisted[0]).name})"
        )
    return listed


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies in ``folder``, in letter case too, as lists written on Windows ignore it
    (``.\\PATIENT09\\...`` for ``patient09``)."""
    return Path(str(path).lower()).is_relative_to(str(folder).lower())


def _listed_contour_files(
    list_file: Path, patient_dir: Path, contour_dir: Path, report: ReadReport, skip_bad: bool
) -> list[Path]:
    """The contour files a ``PNNlist.txt`` names, each checked to exist inside the patient folder, or
    (when the contours live in the set's separate tree) by its file name in ``contour_dir``."""
    try:
        # utf-8-sig: list files written on Windows may start with a byte-order mark.
        lines = list_file.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        report.bad_file(list_file, f"cannot read contour list ({exc.__class__.__name__}: {exc})", skip_bad)
        return []
    patient_abs = Path(os.path.abspath(patient_dir))
    listed: list[Path] = []
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry:
            continue
        relative = entry.replace("\\", "/")
        if "/" not in relative:  # a bare file name: the patient's contour folder holds it
            candidate = Path(os.path.abspath(contour_dir / relative))
        else:
            # Lexical normalisation (not resolve()) so that '..' cannot climb out, whatever symlinks
            # the data folder itself is reached through.
            candidate = Path(os.path.normpath(patient_abs.parent / relative))
            if not _inside(candidate, patient_abs):  # relative to the patient folder: ``P09contours-manual\...``
                candidate = Path(os.path.normpath(patient_abs / relative))
            if PureWindowsPath(entry).drive or relative.startswith("/") or not _inside(candidate, patient_abs):
                reason = f"line {number}: '{entry}' points outside the patient folder {patient_abs}"
                report.bad_file(list_file, reason, skip_bad)
                continue
        candidate = existing_ignoring_case(candidate)  # lists written on Windows ignore letter case
        if not candidate.is_file() and not Path(os.path.abspath(contour_dir)).is_relative_to(patient_abs):
            candidate = existing_ignoring_case(contour_dir / PureWindowsPath(entry).name)
        if not candidate.is_file():
            reason = f"line {number}: listed contour file '{entry}' does not exist (looked for {candidate})"
            report.bad_file(list_file, reason, skip_bad)
            continue
        if candidate not in listed:
            listed.append(candidate)
    return listed


def _contours_by_stem(paths: list[Path], report: ReadReport, skip_bad: bool) -> dict[str, dict[str, Path]]:
    """Group contour files as stem ``PNN-FFFF`` -> label -> path."""
    contours: dict[str, dict[str, Path]] = defaultdict(dict)
    for path in paths:
        match = CONTOUR_NAME.fullmatch(path.name)
        if match is None:
            report.bad_file(path, "contour file name does not follow PNN-FFFF-{i,o}contour-manual.txt", skip_bad)
            continue
        stem, kind = match.group(1).upper(), match.group(2).lower()
        earlier = contours[stem].get(LABEL_OF_CONTOUR[kind])
        if earlier is not None:
            report.bad_file(path, f"a second {kind}-contour file of {stem} (the other: {earlier.name})", skip_bad)
            continue
        contours[stem][LABEL_OF_CONTOUR[kind]] = path
    return dict(contours)


def _read_frames(
    dicom_files: list[Path], annotated: set[str], report: ReadReport, skip_bad: bool
) -> tuple[dict[str, _Frame], dict[str, DicomImage]]:
    """Read every frame's header (all are needed for phases and size checks), and the annotated frames'
    pixels."""
    frames: dict[str, _Frame] = {}
    images: dict[str, DicomImage] = {}
    for path in dicom_files:
        match = DICOM_NAME.fullmatch(path.name)
        if match is None:
            report.bad_file(path, "DICOM file name does not follow PNN-FFFF.dcm", skip_bad)
            continue
        stem = match.group(1).upper()
        if stem in frames:
            report.bad_file(path, f"a second file of frame {stem} (the other: {frames[stem].path.name})", skip_bad)
            continue
        try:
            image = read_dicom(path) if stem in annotated else read_dicom_header(path)
        except DataError as error:
            report.bad_file(path, error.message, skip_bad)
            continue
        frames[stem] = _Frame(path, image.shape, image.trigger_time, image.slice_location)
        if stem in annotated:
            images[stem] = image
    return frames, images


def _drop_odd_sized_frames(
    frames: dict[str, _Frame], images: dict[str, DicomImage], patient: str, report: ReadReport, skip_bad: bool
) -> None:
    """Reject frames whose size differs from the patient's most common size (one cine, one size)."""
    sizes = Counter(frame.shape for frame in frames.values())
    if len(sizes) < 2:
        return
    usual = sizes.most_common(1)[0][0]
    for stem, frame in sorted(frames.items()):
        if frame.shape != usual:
            report.bad_file(
                frame.path,
                f"image is {frame.shape[0]} x {frame.shape[1]} but the other images of patient {patient} "
                f"are {usual[0]} x {usual[1]}",
                skip_bad,
            )
            del frames[stem]
            images.pop(stem, None)


def _phase(frame: _Frame, slice_frames: list[_Frame]) -> str:
    if frame.trigger_time is None or frame.slice_location is None:
        return "unknown"
    times = [other.trigger_time for other in slice_frames]
    if None in times or len(times) < 2:
        # Without the slice's other trigger times only TriggerTime 0 (the R wave) proves ED.
        return "ED" if frame.trigger_time == 0 else "unknown"
    return "ED" if frame.trigger_time == min(times) else "ES"  # type: ignore[type-var]


def _note_missing_contours(stem: str, contour_files: dict[str, Path], report: ReadReport) -> None:
    for kind, label in LABEL_OF_CONTOUR.items():
        if label not in contour_files:
            present = ", ".join(f"'{name}'" for name in contour_files)
            report.notes.append(f"{stem}: no {kind}-contour file; the sample has only {present}")

"""Reader for the Sunnybrook Cardiac Data (Radau et al. 2009), in the layouts it is distributed in.

1. **Repackaged with a ``link.csv``**::

    link.csv                                                 patient_id,original_id
    dicoms/<patient_id>/<N>.dcm                              one image per file
    contourfiles/<original_id>/i-contours/IM-0001-NNNN-icontour-manual.txt
    contourfiles/<original_id>/o-contours/IM-0001-NNNN-ocontour-manual.txt

   ``NNNN`` is ``N`` zero-padded to 4 digits.
2. **The challenge and Cardiac Atlas Project downloads**: ``<case>/contours-manual/IRCCI-expert/``
   contour folders and ``IM-SSSS-NNNN.dcm`` images (:mod:`rvseg.data.sunnybrook_downloads`).

The contours are of the LEFT ventricle: the i-contour (endocardium) gives ``labels[0]`` and the
o-contour (epicardium) ``labels[1]``; the names come from the caller.

**Phase.** No layout says which images are ED or ES. The experts contoured two phases of every
slice; with 20 phases per cycle (CardiacNumberOfImages, else the challenge's 20), an image's phase
index is ``(N - 1) % 20``. Of a patient's two contoured phase indices, the one whose endocardium is
larger over the slices contoured at both is ED (end-diastole is the largest cavity), the other ES.
A patient contoured at any other number of phases, or with no slice contoured at both, keeps
``unknown``, with a note.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

from rvseg.data.dicom import read_dicom
from rvseg.data.folders import files_named
from rvseg.data.pngpairs import drop_odd_sizes
from rvseg.data.rvsc import contour_masks, dicom_sample
from rvseg.data.sample import ReadReport, Sample, note_unnested
from rvseg.data.sunnybrook_downloads import SEARCH_DEPTH, find_cases, looks_like_sunnybrook_download
from rvseg.errors import ConfigError, DataError

LINK_FILE = "link.csv"
LINK_COLUMNS = ("patient_id", "original_id")
LINKED_IMAGE_FILE = re.compile(r"(\d+)\.dcm", re.IGNORECASE)
LINKED_CONTOUR_FILE = re.compile(r"IM-0001-(\d+)-([io])contour-manual\.txt", re.IGNORECASE)
CONTOUR_KINDS = ("i", "o")
#: Phases per cycle of the challenge's cines, where an image does not say (CardiacNumberOfImages).
CHALLENGE_PHASES = 20


def looks_like_linked(root: str | Path) -> bool:
    """Whether ``root`` holds ``link.csv``, ``dicoms/`` and ``contourfiles/`` (no file reads)."""
    root = Path(root)
    return (root / LINK_FILE).is_file() and (root / "dicoms").is_dir() and (root / "contourfiles").is_dir()


def looks_like_sunnybrook(root: str | Path) -> bool:
    """Whether ``root`` is in one of the Sunnybrook layouts (module docstring; folder names only)."""
    return looks_like_linked(root) or looks_like_sunnybrook_download(root)


def read_sunnybrook(
    root: str | Path, *, labels: tuple[str, str] = ("endo", "epi"), skip_bad: bool = False
) -> ReadReport:
    """Read a Sunnybrook folder in any of its layouts (module docstring).

    Args:
        root: the folder holding ``link.csv``, ``dicoms/`` and ``contourfiles/``; or a download (or a
            folder above it) holding ``<case>/contours-manual/IRCCI-expert/`` folders and the images.
        labels: the names of the i-contour and o-contour labels, in that order.
        skip_bad: record bad files (and patients missing on disk) in ``report.skipped`` and carry
            on instead of raising.

    Returns:
        a :class:`ReadReport` with format ``"sunnybrook"``. Each sample: id ``<patient>-<NNNN>``,
        patient = the ``patient_id`` of ``link.csv``, else the case's ``PatientID`` from
        ``scd_patientdata.csv`` (``SCD0000101``) or its unpadded id (``SC-HF-I-1``), image float32 (H, W),
        bool (H, W) masks, frame ``N``, slice = slice location formatted with 2 decimals, phase
        ED/ES (or ``unknown``; module docstring).

    Raises:
        ConfigError: ``labels`` is not two distinct non-empty names.
        DataError: ``root`` is not in these layouts, ``link.csv`` is malformed, or (without
            ``skip_bad``) a patient folder is missing, a file is bad, or an image's size differs from
            the other images of its patient.
    """
    labels = _checked_labels(labels)
    root = Path(root)
    report = ReadReport(format="sunnybrook", labels=labels)
    if looks_like_linked(root):
        _read_linked(root, labels, report, skip_bad)
    else:
        cases = find_cases(root, labels, report, skip_bad) if root.is_dir() else None
        if cases is None:
            raise DataError(
                f"not a Sunnybrook folder: expected {LINK_FILE}, dicoms/ and contourfiles/ in it, or "
                f"<case>/contours-manual/IRCCI-expert/ contour folders up to {SEARCH_DEPTH} levels below it",
                root,
            )
        for case in cases:
            _read_patient(case.patient, case.contours, case.images, labels, report, skip_bad)
    report.samples = sorted(drop_odd_sizes(report.samples, report, skip_bad), key=lambda sample: sample.id)
    return report


def _read_linked(root: Path, labels: tuple[str, str], report: ReadReport, skip_bad: bool) -> None:
    links = _read_links(root / LINK_FILE)
    _note_unlinked_folders(root, links, report)
    for patient_id, original_id in links:
        dicom_dir = root / "dicoms" / patient_id
        contour_dir = root / "contourfiles" / original_id
        missing = next((folder for folder in (dicom_dir, contour_dir) if not folder.is_dir()), None)
        if missing is not None:
            reason = f"patient {patient_id} ({original_id}) is listed in {LINK_FILE} but this folder does not exist"
            report.bad_file(missing, reason, skip_bad)
            continue
        contours = _linked_contours(contour_dir, labels, report, skip_bad)
        images = _linked_images(dicom_dir, report, skip_bad)
        _read_patient(patient_id, contours, images, labels, report, skip_bad)


def _checked_labels(labels: tuple[str, str]) -> tuple[str, str]:
    labels = tuple(labels)  # type: ignore[assignment]
    if len(labels) != 2 or not all(isinstance(name, str) and name for name in labels) or labels[0] == labels[1]:
        raise ConfigError(f"Sunnybrook labels must be two distinct names (i-contour, o-contour), not {labels!r}")
    return labels


def _read_links(path: Path) -> list[tuple[str, str]]:
    """The ``(patient_id, original_id)`` rows of ``link.csv``."""
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read ({exc.__class__.__name__}: {exc})", path) from None
    header = tuple(cell.strip() for cell in rows[0]) if rows else ()
    if header != LINK_COLUMNS:
        raise DataError(f"expected the header 'patient_id,original_id', got {','.join(header)!r}", path)
    links: list[tuple[str, str]] = []
    for number, row in enumerate(rows[1:], start=2):
        cells = [cell.strip() for cell in row]
        if not any(cells):
            continue
        if len(cells) != 2 or not all(cells):
            got = ",".join(row)
            raise DataError(f"line {number} is malformed: expected 'patient_id,original_id', got {got!r}", path)
        if any(cells[0] == patient or cells[1] == original for patient, original in links):
            raise DataError(f"line {number}: {','.join(cells)!r} repeats a patient already listed", path)
        links.append((cells[0], cells[1]))
    if not links:
        raise DataError("lists no patient", path)
    return links


def _note_unlinked_folders(root: Path, links: list[tuple[str, str]], report: ReadReport) -> None:
    for folder, linked in (("dicoms", {p for p, _ in links}), ("contourfiles", {o for _, o in links})):
        children = (root / folder).iterdir()
        unlinked = sorted(child.name for child in children if child.is_dir() and child.name not in linked)
        if unlinked:
            report.notes.append(f"{root / folder}: folder(s) not in {LINK_FILE}, not read: {', '.join(unlinked)}")


def _read_patient(
    patient_id: str,
    contours: dict[int, dict[str, Path]],
    images: dict[int, Path],
    labels: tuple[str, str],
    report: ReadReport,
    skip_bad: bool,
) -> None:
    """Pair a patient's contours (image number -> label -> file) with its images (number -> DICOM)."""
    samples: list[Sample] = []
    cycle_lengths: dict[int, int] = {}
    for number, contour_files in sorted(contours.items()):
        if number not in images:
            report.unmatched_contours.extend(str(path) for path in contour_files.values())
            continue
        sample_id = f"{patient_id}-{number:04d}"
        if labels[0] not in contour_files:
            report.notes.append(f"{sample_id}: o-contour without an i-contour; the sample has only '{labels[1]}'")
        try:
            image = read_dicom(images[number])
        except DataError as error:
            report.bad_file(images[number], error.message, skip_bad)
            report.notes.append(f"{sample_id}: contours not used, the DICOM image was skipped")
            continue
        masks, sources = contour_masks(contour_files, image.shape, report, skip_bad)
        if not masks:
            continue
        note_unnested(sample_id, masks, *labels, report)
        cycle_lengths[number] = image.cardiac_images or CHALLENGE_PHASES
        samples.append(dicom_sample(sample_id, patient_id, image, masks, sources, number))
    report.unmatched_images.extend(str(images[number]) for number in sorted(images) if number not in contours)
    _assign_phases(patient_id, samples, cycle_lengths, labels[0], report)
    report.samples.extend(samples)


def _assign_phases(
    patient_id: str, samples: list[Sample], cycle_lengths: dict[int, int], inner: str, report: ReadReport
) -> None:
    """ED/ES for a patient contoured at two phase indices: ED is the larger cavity (module docstring)."""
    by_phase: dict[int, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_phase[(sample.frame - 1) % cycle_lengths[sample.frame]].append(sample)
    if len(by_phase) != 2:
        if samples:
            report.notes.append(f"{patient_id}: contours at {len(by_phase)} phase(s) of the cycle, not 2; "
                                "ED/ES not assigned")
        return
    groups = list(by_phase.values())
    areas = [{s.slice: int(s.masks[inner].sum()) for s in group if inner in s.masks} for group in groups]
    shared = set(areas[0]) & set(areas[1]) - {""}
    if not shared:
        report.notes.append(f"{patient_id}: no slice has '{inner}' contours at both phases; ED/ES not assigned")
        return
    totals = [sum(area[key] for key in shared) for area in areas]
    if totals[0] == totals[1]:
        report.notes.append(f"{patient_id}: both contoured phases have the same cavity size; ED/ES not assigned")
        return
    ed, es = groups if totals[0] > totals[1] else groups[::-1]
    for group, phase in ((ed, "ED"), (es, "ES")):
        for sample in group:
            sample.phase = phase


def _linked_contours(
    contour_dir: Path, labels: tuple[str, str], report: ReadReport, skip_bad: bool
) -> dict[int, dict[str, Path]]:
    """Group the patient's contour files as image number ``N`` -> label -> path."""
    contours: dict[int, dict[str, Path]] = defaultdict(dict)
    for kind, label in zip(CONTOUR_KINDS, labels, strict=True):
        for path in files_named(contour_dir / f"{kind}-contours", "*.txt"):
            match = LINKED_CONTOUR_FILE.fullmatch(path.name)
            if match is None or match.group(2).lower() != kind:
                report.bad_file(path, f"file name does not follow IM-0001-NNNN-{kind}contour-manual.txt", skip_bad)
                continue
            number = int(match.group(1))
            if label in contours[number]:
                report.bad_file(path, f"a second {kind}-contour file of image {number} (the other: "
                                      f"{contours[number][label].name})", skip_bad)
                continue
            contours[number][label] = path
    return dict(contours)


def _linked_images(dicom_dir: Path, report: ReadReport, skip_bad: bool) -> dict[int, Path]:
    """The patient's DICOM files as image number ``N`` -> path (not read: most have no contour)."""
    images: dict[int, Path] = {}
    for path in files_named(dicom_dir, "*.dcm"):
        match = LINKED_IMAGE_FILE.fullmatch(path.name)
        if match is None:
            report.bad_file(path, "DICOM file name does not follow <N>.dcm", skip_bad)
            continue
        number = int(match.group(1))
        if number in images:
            report.bad_file(path, f"a second file of image {number} (the other: {images[number].name})", skip_bad)
            continue
        images[number] = path
    return images

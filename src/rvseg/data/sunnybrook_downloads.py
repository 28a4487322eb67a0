"""Finding the cases of the Sunnybrook Cardiac Data in the layouts it is downloaded in.

Both downloads keep the expert contours in one folder per case, named by the case's original id
(``SC-HF-I-01``, ``SC-N-40``)::

    <case>/contours-manual/IRCCI-expert/IM-0001-NNNN-{i,o,p1,p2}contour-manual.txt

and the DICOM images of the case elsewhere, as ``IM-SSSS-NNNN.dcm`` files: ``SSSS`` is a series
number, ``NNNN`` the image number that the contour file names (``(slice - 1) * 20 + phase`` for the
challenge's 20-phase cines). Where the images live:

- **the challenge download** (MICCAI 2009 LV segmentation challenge, as used by the Kaggle Data
  Science Bowl 2015 tutorial): a folder named by the case, padded or not (``challenge_training/
  SC-HF-I-1/``, or ``TrainingDataDICOM/SC-HF-I-01/DICOM/``), that may hold every series of the
  study mixed together;
- **the Cardiac Atlas Project download**: ``SCD_IMAGES_01/SCD0000101/CINESAX_300/`` (or
  ``SCD_DeidentifiedImages/SCD0000101/...``), the folder named by the ``PatientID`` that
  ``scd_patientdata.csv`` (``PatientID,OriginalID,...``) gives the case's ``OriginalID``. The table
  may also be the Excel workbook ``scd_patientdata.xlsx`` (its first sheet), named in any letter
  case, at the root or up to two folders below it;
- or inside the case folder itself, beside ``contours-manual/``.

The series is the one whose files cover the most contoured image numbers; of several that cover
all, the one with the most images (the short-axis cine is by far the longest series of a study); of
several of that size (SC-HYP-11 holds IM-0601 and IM-0606), the one whose images fit the i-contours
best: brightest inside them against their rim (:func:`blood_pool_contrast`). Every such choice is
reported in the notes. Case ids compare with their numbers unpadded
(``SC-HF-I-01`` is ``SC-HF-I-1``); a case's patient id is its ``PatientID`` when the table gives
one, else its unpadded id, so the same case has the same id in every layout that names it alike.
The i- and o-contours give the caller's two labels; papillary-muscle contours (``p1``, ``p2``) are
counted in a note and not read.
"""

from __future__ import annotations

import csv
import math
import re
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
from scipy import ndimage

from rvseg.data.contours import polygon_to_mask, read_contour_file
from rvseg.data.dicom import read_dicom
from rvseg.data.folders import files_named, subfolders, unique_folders
from rvseg.data.sample import ReadReport
from rvseg.errors import DataError

CONTOUR_FOLDERS = ("contours-manual", "IRCCI-expert")
EXPERT_CONTOUR_FILE = re.compile(r"IM-0001-(\d+)-(i|o|p1|p2)contour-manual\.txt", re.IGNORECASE)
SERIES_IMAGE_FILE = re.compile(r"IM-(\d+)-(\d+)\.dcm", re.IGNORECASE)
#: File names of the table of PatientID per OriginalID, in order of preference (compared in lower case).
PATIENT_TABLES = ("scd_patientdata.csv", "scd_patientdata.xlsx")
PATIENT_TABLE_COLUMNS = ("PatientID", "OriginalID")
#: SpreadsheetML (ECMA-376) names: the main namespace, and the attribute naming a sheet's relationship.
XLSX_MAIN = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
XLSX_RELATIONSHIP_ID = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"
#: Folder levels searched below the root (``<root>/Sunnybrook Cardiac MR Database ContoursPart3/
#: TrainingDataContours/SC-HF-I-01/contours-manual/IRCCI-expert`` is 5 deep).
SEARCH_DEPTH = 6
#: Levels searched below a case's image folder for its DICOM files (``CINESAX_300/``, ``DICOM/``).
IMAGE_DEPTH = 2


@dataclass
class Case:
    """One case: its contour files and the DICOM images of the series they were drawn on.

    Attributes:
        patient: the case's ``PatientID`` (``SCD0000101``) or unpadded id (``SC-HF-I-1``).
        contours: image number -> label -> contour file.
        images: image number -> DICOM file, every image of the chosen series.
    """

    patient: str
    contours: dict[int, dict[str, Path]] = field(default_factory=dict)
    images: dict[int, Path] = field(default_factory=dict)


def case_key(name: str) -> str:
    """A case id with its numbers unpadded: ``SC-HF-I-01`` -> ``SC-HF-I-1`` (case-insensitive)."""
    return "-".join(str(int(token)) if re.fullmatch(r"[0-9]+", token) else token.upper() for token in name.split("-"))


def looks_like_sunnybrook_download(root: str | Path) -> bool:
    """Whether ``root`` holds a ``<case>/contours-manual/IRCCI-expert/`` folder (up to :data:`SEARCH_DEPTH`)."""
    root = Path(root)
    return root.is_dir() and bool(_case_folders_among(subfolders(root, SEARCH_DEPTH)))


def find_cases(root: str | Path, labels: tuple[str, str], report: ReadReport, skip_bad: bool) -> list[Case] | None:
    """Every case of a Sunnybrook download below ``root``, with its contours and its images' series;
    None when ``root`` holds no case folder at all.

    A case whose images cannot be found, or a case found twice (:func:`~rvseg.data.folders.unique_folders`),
    goes through ``report.bad_file``.
    """
    root = Path(root)
    folders = subfolders(root, SEARCH_DEPTH)
    case_folders = _case_folders_among(folders)
    if not case_folders:
        return None
    by_name: dict[str, list[Path]] = defaultdict(list)
    for folder in folders:
        if not any(folder.is_relative_to(case) for case in case_folders):
            by_name[folder.name.upper()].append(folder)
    near_root = [root, *(folder for folder in folders if len(folder.relative_to(root).parts) <= 2)]
    patient_ids = _patient_ids(near_root, report, skip_bad)
    # Without the table, a Cardiac Atlas Project download's image folders (SCD0000101) match no case.
    missing_table = "" if patient_ids is not None else (
        f"; no patient table ({' or '.join(PATIENT_TABLES)}, which maps each case to the PatientID "
        f"naming its image folder) was found in {root} or two levels below it")
    patient_ids = patient_ids or {}

    cases: list[Case] = []
    for case_folder in unique_folders(case_folders, lambda folder: case_key(folder.name), report, skip_bad):
        key = case_key(case_folder.name)
        contours = _expert_contours(case_folder.joinpath(*CONTOUR_FOLDERS), labels, report, skip_bad)
        names = [patient_ids[key].upper()] if key in patient_ids else []
        names += [name for name in by_name if case_key(name) == key]
        image_folders = [*dict.fromkeys(folder for name in names for folder in by_name.get(name, [])), case_folder]
        images = _contoured_series(key, case_folder, contours, image_folders, report, skip_bad, missing_table)
        if images is not None:
            cases.append(Case(patient=patient_ids.get(key, key), contours=contours, images=images))
    return cases


def _case_folders_among(folders: list[Path]) -> list[Path]:
    return sorted(folder.parent.parent for folder in folders if (folder.parent.name, folder.name) == CONTOUR_FOLDERS)


def _patient_ids(folders: list[Path], report: ReadReport, skip_bad: bool) -> dict[str, str] | None:
    """Case key -> ``PatientID`` from the first patient table (:data:`PATIENT_TABLES`) in ``folders``;
    None when there is none."""
    tables = [path for folder in folders for name in PATIENT_TABLES for path in files_named(folder, name)]
    if not tables:
        return None
    table = tables[0]
    try:
        rows = _xlsx_rows(table) if table.suffix.lower() == ".xlsx" else list(
            csv.DictReader(table.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError, csv.Error, zipfile.BadZipFile, ElementTree.ParseError, KeyError, IndexError,
            StopIteration, ValueError) as exc:  # a damaged workbook fails in any of its parts
        report.bad_file(table, f"cannot read ({exc.__class__.__name__}: {exc})", skip_bad)
        return {}
    if not rows or not all(column in rows[0] for column in PATIENT_TABLE_COLUMNS):
        report.bad_file(table, f"expected the columns {', '.join(PATIENT_TABLE_COLUMNS)}", skip_bad)
        return {}
    return {case_key(row["OriginalID"].strip()): row["PatientID"].strip() for row in rows
            if (row["OriginalID"] or "").strip() and (row["PatientID"] or "").strip()}


def _xlsx_rows(path: Path) -> list[dict[str, str]]:
    """The rows of an Excel workbook's first sheet as text, keyed by its first row's cells.

    Reads the SpreadsheetML parts (ECMA-376 Part 1, 18.2-18.4) with the standard library: the first
    ``<sheet>`` of ``xl/workbook.xml``, its part through ``xl/_rels/workbook.xml.rels``, and its cells'
    values (shared strings, inline strings, numbers as written), placed by their ``r`` reference.
    """
    with zipfile.ZipFile(path) as book:
        shared = []
        if "xl/sharedStrings.xml" in book.namelist():
            strings = ElementTree.fromstring(book.read("xl/sharedStrings.xml"))
            shared = ["".join(text.text or "" for text in item.iter(f"{XLSX_MAIN}t"))
                      for item in strings.iter(f"{XLSX_MAIN}si")]
        first = next(ElementTree.fromstring(book.read("xl/workbook.xml")).iter(f"{XLSX_MAIN}sheet"))
        relations = ElementTree.fromstring(book.read("xl/_rels/workbook.xml.rels"))
        target = next(relation.get("Target", "") for relation in relations
                      if relation.get("Id") == first.get(XLSX_RELATIONSHIP_ID))
        sheet = ElementTree.fromstring(book.read(target.lstrip("/") if target.startswith("/") else f"xl/{target}"))
    table = []
    for row in sheet.iter(f"{XLSX_MAIN}row"):
        cells: dict[int, str] = {}
        for position, cell in enumerate(row.iter(f"{XLSX_MAIN}c")):
            index = _column_index(cell.get("r", ""), position)
            if cell.get("t") == "inlineStr":
                cells[index] = "".join(text.text or "" for text in cell.iter(f"{XLSX_MAIN}t"))
            elif (value := cell.find(f"{XLSX_MAIN}v")) is not None and value.text is not None:
                cells[index] = shared[int(value.text)] if cell.get("t") == "s" else value.text
        table.append(cells)
    if not table:
        return []
    header = {index: name.strip() for index, name in table[0].items()}
    return [{name: cells.get(index, "") for index, name in header.items()} for cells in table[1:]]


def _column_index(reference: str, position: int) -> int:
    """The 0-based column of a cell reference (``A1`` -> 0, ``AB7`` -> 27); ``position`` without one (the
    reference is optional, and then cells follow one another)."""
    letters = re.match(r"[A-Z]*", reference)[0]
    if not letters:
        return position
    return sum((ord(letter) - ord("A") + 1) * 26 ** k for k, letter in enumerate(reversed(letters))) - 1


def _expert_contours(
    folder: Path, labels: tuple[str, str], report: ReadReport, skip_bad: bool
) -> dict[int, dict[str, Path]]:
    """Image number -> label -> i/o-contour file of one case's ``IRCCI-expert`` folder."""
    contours: dict[int, dict[str, Path]] = defaultdict(dict)
    papillary = 0
    label_of = {"i": labels[0], "o": labels[1]}
    for path in files_named(folder, "*.txt"):
        match = EXPERT_CONTOUR_FILE.fullmatch(path.name)
        if match is None:
            report.bad_file(path, "file name does not follow IM-0001-NNNN-{i,o,p1,p2}contour-manual.txt", skip_bad)
            continue
        kind, number = match.group(2).lower(), int(match.group(1))
        if kind in label_of and label_of[kind] in contours[number]:
            report.bad_file(path, f"a second {kind}-contour file of image {number} (the other: "
                                  f"{contours[number][label_of[kind]].name})", skip_bad)
        elif kind in label_of:
            contours[number][label_of[kind]] = path
        else:
            papillary += 1
    if papillary:
        report.notes.append(f"{folder}: {papillary} papillary-muscle contour file(s) (p1/p2) not read")
    return dict(contours)


def _contoured_series(
    key: str,
    case_folder: Path,
    contours: dict[int, dict[str, Path]],
    image_folders: list[Path],
    report: ReadReport,
    skip_bad: bool,
    missing_table: str = "",
) -> dict[int, Path] | None:
    """Image number -> DICOM file of the series (one folder, one series number) the contours were drawn on;
    ``missing_table`` ends the message when there are none."""
    series: dict[tuple[Path, int], dict[int, Path]] = defaultdict(dict)
    for image_folder in image_folders:
        for folder in (image_folder, *subfolders(image_folder, IMAGE_DEPTH)):
            for path in files_named(folder, "*.dcm"):
                match = SERIES_IMAGE_FILE.fullmatch(path.name)
                if match is not None:
                    series[(folder, int(match.group(1)))][int(match.group(2))] = path
    numbers = set(contours)
    chosen = max(series, key=lambda name: (len(numbers & set(series[name])), len(series[name])), default=None)
    if chosen is None or not numbers & set(series[chosen]):
        searched = ", ".join(str(folder) for folder in image_folders)
        found = "none" if chosen is None else f"{len(series)} series, none with a contoured image number"
        report.bad_file(case_folder, f"no IM-SSSS-NNNN.dcm images of the contoured numbers for case {key} "
                                     f"(searched {searched}, the folders named after the case or its PatientID: "
                                     f"{found}){missing_table}", skip_bad)
        return None
    covering = [name for name in series if numbers <= set(series[name])]
    if len(covering) > 1:
        largest = [name for name in covering if len(series[name]) == len(series[chosen])]
        reason = "the largest"
        if len(largest) > 1:  # SC-HYP-11's IM-0601 and IM-0606, say: equal in size, one drawn on
            contrasts = {name: blood_pool_contrast(series[name], contours) for name in largest}
            chosen = max(sorted(largest), key=lambda name: contrasts[name])
            scores = ", ".join(f"IM-{number:04d} {contrasts[folder, number]:.2f}" for folder, number in sorted(largest))
            reason = ("of the largest, the one whose images are brightest inside the i-contours against their "
                      f"rim (the blood pool the experts traced): {scores}")
        listed = ", ".join(f"{folder.name}/IM-{number:04d} ({len(series[folder, number])} images)"
                           for folder, number in sorted(covering))
        report.notes.append(f"{case_folder}: {len(covering)} series hold every contoured image ({listed}); "
                            f"read {chosen[0]}/IM-{chosen[1]:04d}-*, {reason}")
    return series[chosen]


def blood_pool_contrast(images: dict[int, Path], contours: dict[int, dict[str, Path]], samples: int = 5) -> float:
    """How well a series' images fit the case's i-contours: on up to ``samples`` contoured images, the mean
    intensity inside the contour minus that of a 3-pixel rim around it, in units of the image's standard
    deviation, averaged. The series the experts traced shows the bright blood pool inside a dark
    myocardium (high contrast); another series behind the same image numbers does not. Images or
    contours that cannot be read count as nothing (-inf when none can)."""
    inner = [(number, path) for number, files in sorted(contours.items()) for path in files.values()
             if "icontour" in path.name.lower()]
    picked = inner[:: max(1, len(inner) // samples)][:samples]
    scores = []
    for number, path in picked:
        try:
            pixels = read_dicom(images[number]).pixels
            mask = polygon_to_mask(read_contour_file(path, pixels.shape), pixels.shape)
        except DataError:
            continue
        rim = ndimage.binary_dilation(mask, iterations=3) & ~mask
        if mask.any() and rim.any():
            scores.append((pixels[mask].mean() - pixels[rim].mean()) / (pixels.std() + 1e-6))
    return float(np.mean(scores)) if scores else -math.inf

"""Images with contour maps, listed in a CSV manifest (e.g. the RVSC training set as PNG pairs).

Layout: a folder holding images, one contour map per image and label (the inner, ``i``, contour
and the outer, ``o``, contour: a filled mask or only its outline, see :mod:`rvseg.data.outlines`),
and a CSV manifest with one row per image::

    image_file,image_file_i_contour,image_file_o_contour
    P01-0080.png,P01-0080-icontour-manual.png,P01-0080-ocontour-manual.png

Without a manifest (no CSV whose header names an image and a contour column), images and maps are
paired by name: ``<stem>-icontour-manual.png`` and ``<stem>-ocontour-manual.png`` (``-`` or ``_``,
``-manual`` optional, any of the image suffixes below, case ignored) are the maps of ``<stem>.png``.
Automatic maps (``-icontour-auto.png``) are not ground truth: they are counted in a note, not read.

Column names are matched case-insensitively, ignoring punctuation: the image column is named like
``image``/``image_file``/``img``, the contour columns hold ``icontour``/``endo``/``inner`` and
``ocontour``/``epi``/``outer``. Paths are relative to the manifest's folder (``\\`` is read as
``/``). An empty contour cell means the image has no map for that label.

Samples: labels ``endo`` (i map) and ``epi`` (o map); the image as float32 grey levels (colour images
are converted with the ITU-R BT.709 luma weights, alpha dropped), no spacing. The sample id is the
image's stem (``P01-0080``), the patient the part before the first ``-`` (``P01``) and the frame the
number after it. For RVSC-like names (``PNN-FFFF``) each slice is a cine of 20 frames: the slice is
``frame // 20`` and the phase follows the RVSC annotation rule: the first frame of each slice
(``frame % 20 == 0``) is end-diastole, any other annotated frame end-systole. Other names get phase
``unknown`` and no slice.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from rvseg.data.contours import LABEL_OF_CONTOUR
from rvseg.data.outlines import fill_contour_map
from rvseg.data.sample import ReadReport, Sample, note_unnested
from rvseg.errors import DataError

LABELS = ("endo", "epi")
EXPECTED_COLUMNS = "image_file,image_file_i_contour,image_file_o_contour"
RVSC_NAME = re.compile(r"^P\d+-(\d{4})$")
RVSC_FRAMES_PER_SLICE = 20
#: ITU-R BT.709 luma weights for R, G, B.
LUMA_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: The stem of a contour map paired with its image by name (no manifest).
MAP_NAME = re.compile(r"(?P<stem>.+?)[-_](?P<kind>[io])contour(?:[-_](?P<source>manual|auto))?", re.IGNORECASE)


def looks_like_pngpairs(root: str | Path) -> bool:
    """Whether ``root`` is a folder holding a CSV whose header names an image and a contour column, or
    (without a CSV) an image with a contour map named after it."""
    root = Path(root)
    if not root.is_dir():
        return False
    return bool(manifests_in(root)) or _has_pairs(pairs_by_name(root)[0])


def manifests_in(root: Path) -> list[Path]:
    """The CSV files of ``root`` whose header names an image column and a contour column."""
    found = []
    for candidate in sorted(root.glob("*.csv")):
        try:
            with candidate.open(newline="", encoding="utf-8-sig") as handle:
                header = next(csv.reader(handle), [])
        except (OSError, UnicodeDecodeError, csv.Error):
            continue
        roles = {column_role(name) for name in header}
        if "image" in roles and roles & set(LABELS):
            found.append(candidate)
    return found


def _has_pairs(rows: list[tuple[int, dict[str, Path]]]) -> bool:
    return any(set(LABELS) & paths.keys() for _, paths in rows)


def read_pngpairs(root: str | Path, *, manifest: str | Path | None = None, skip_bad: bool = False) -> ReadReport:
    """Read a folder of images and contour maps listed in a CSV manifest (module docstring).

    Args:
        root: the folder.
        manifest: the CSV; default: the only ``*.csv`` in ``root``, or with none, pairing by name. A
            relative path is looked up in ``root`` first, then as given.
        skip_bad: record bad files in ``report.skipped`` and go on, instead of raising.

    Returns:
        a :class:`ReadReport` with format ``pngpairs`` and labels ``("endo", "epi")``; samples sorted
        by id. Maps that cannot be filled are listed in ``report.unfillable`` and their label is
        left out of the sample.

    Raises:
        DataError: no or several manifests, an empty manifest or one without the expected columns; and,
            unless ``skip_bad``, a row naming a missing file, an unreadable image, a map whose size
            differs from its image, an image whose size differs from the other images of its patient.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("is not a folder (expected images, contour maps and a CSV manifest)", root)
    report = ReadReport(format="pngpairs", labels=LABELS)
    by_name = False
    if manifest is None and not manifests_in(root):
        rows, report.unmatched_contours, automatic = pairs_by_name(root)
        by_name = _has_pairs(rows)
        if by_name and automatic:
            report.notes.append(f"{root}: {len(automatic)} automatic contour map(s) (-auto) not read as ground truth")
        if by_name and any(root.glob("*.csv")):
            names = ", ".join(path.name for path in sorted(root.glob("*.csv")))
            report.notes.append(f"{root}: no CSV is a manifest ({names}); images and maps paired by name")
    if not by_name:
        manifest_path = find_manifest(root, manifest)
        rows = read_manifest(manifest_path)
    samples = []
    seen: dict[str, int] = {}
    for number, paths in rows:
        image_path = paths["image"]
        stem = image_path.stem.lower() if by_name else image_path.stem
        if stem in seen:
            if by_name:
                report.bad_file(image_path, f"a second image named {image_path.stem} (the maps pair by stem)", skip_bad)
            else:
                repeated = f"row {number} lists {image_path.name} again (first in row {seen[stem]})"
                report.bad_file(manifest_path, repeated, skip_bad)
            continue
        seen[stem] = number
        listed_in = "the folder (paired by name)" if by_name else f"{manifest_path.name} (row {number})"
        try:
            sample = read_row(paths, listed_in, report, skip_bad)
        except _SkippedRow:
            continue
        if sample is not None:
            samples.append(sample)
    report.samples = sorted(drop_odd_sizes(samples, report, skip_bad), key=lambda s: s.id)
    if not by_name:
        note_unlisted_files(root, manifest_path, rows, report)
    return report


def pairs_by_name(root: Path) -> tuple[list[tuple[int, dict[str, Path]]], list[str], list[Path]]:
    """Rows like :func:`read_manifest`'s from file names (module docstring), numbered in name order;
    the contour maps that have no image of their stem; and the automatic maps, not paired."""
    files = sorted(path for path in root.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
    maps: dict[str, dict[str, Path]] = {}
    images: list[Path] = []
    automatic: list[Path] = []
    for path in files:
        match = MAP_NAME.fullmatch(path.stem)
        if match is None:
            images.append(path)
        elif (match["source"] or "").lower() == "auto":
            automatic.append(path)
        else:
            maps.setdefault(match["stem"].lower(), {})[LABEL_OF_CONTOUR[match["kind"].lower()]] = path
    rows = [(number, {"image": image, **maps.get(image.stem.lower(), {})})
            for number, image in enumerate(images, start=1)]
    stems = {image.stem.lower() for image in images}
    orphans = [str(path) for stem, found in sorted(maps.items()) if stem not in stems for path in found.values()]
    return rows, orphans, automatic


def column_role(name: str) -> str | None:
    """``"image"``, ``"endo"``, ``"epi"`` or None for a manifest column name."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    if any(word in key for word in ("icontour", "endo", "inner")):
        return "endo"
    if any(word in key for word in ("ocontour", "epi", "outer")):
        return "epi"
    if key in ("image", "imagefile", "imagepath", "img", "imgfile", "file", "filename"):
        return "image"
    return None


def find_manifest(root: Path, manifest: str | Path | None) -> Path:
    """The manifest to read: the given one (looked up in ``root`` first), the only CSV of ``root`` whose
    header is a manifest's, or else its only CSV (whose reading then says what is wrong with it)."""
    if manifest is not None:
        for candidate in (root / manifest, Path(manifest)):
            if candidate.is_file():
                return candidate
        raise DataError(f"manifest not found (looked for it in {root} and as given)", manifest)
    found = manifests_in(root) or sorted(root.glob("*.csv"))
    if not found:
        raise DataError(f"no CSV manifest (*.csv) found, and no contour map named after an image; expected a "
                        f"manifest with columns {EXPECTED_COLUMNS}, or <stem>-icontour-manual.png beside <stem>.png",
                        root)
    if len(found) > 1:
        names = ", ".join(path.name for path in found)
        raise DataError(f"several CSV files ({names}); say which one is the manifest", root)
    return found[0]


def read_manifest(path: Path) -> list[tuple[int, dict[str, Path]]]:
    """Rows of a manifest as ``(row number, {"image"/"endo"/"epi": path})``; empty cells are left out.

    Row numbers count the header as row 1, as a spreadsheet shows them.

    Raises:
        DataError: an unreadable or empty manifest, a header without an image and a contour column,
            no rows, or a row without an image.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            table = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read the manifest ({exc.__class__.__name__}: {exc})", path) from None
    table = [(number, row) for number, row in enumerate(table, start=1) if any(cell.strip() for cell in row)]
    if not table:
        raise DataError(f"the manifest is empty; expected a header {EXPECTED_COLUMNS} and one row per image", path)
    _, header = table[0]
    roles = {}
    for index, name in enumerate(header):
        role = column_role(name)
        if role is not None and role not in roles:
            roles[role] = index
    if "image" not in roles or not (roles.keys() & set(LABELS)):
        raise DataError(
            f"header {','.join(header)!r} lacks an image column or a contour column; expected {EXPECTED_COLUMNS}",
            path,
        )
    if len(table) == 1:
        raise DataError("the manifest has a header but no rows", path)
    rows = []
    for number, row in table[1:]:
        cells = {role: row[index].strip() if index < len(row) else "" for role, index in roles.items()}
        if not cells["image"]:
            raise DataError(f"row {number} has no image file", path)
        rows.append((number, {role: path.parent / cell.replace("\\", "/") for role, cell in cells.items() if cell}))
    return rows


class _SkippedRow(Exception):
    """Raised after a bad file of a row was recorded with ``skip_bad``: the row is passed over."""


def reject(path: Path, reason: str, report: ReadReport, skip_bad: bool) -> None:
    """Record a bad file (or raise :class:`DataError` unless ``skip_bad``) and pass over its row."""
    report.bad_file(path, reason, skip_bad)
    raise _SkippedRow


def read_row(paths: dict[str, Path], listed_in: str, report: ReadReport, skip_bad: bool) -> Sample | None:
    """The sample of one manifest row, or None when it has no usable contour map (recorded in ``report``).
    ``listed_in`` says where the row comes from in messages (``train_dir.csv (row 5)``).

    Raises:
        _SkippedRow: a file of the row is bad and was recorded with ``skip_bad``.
    """
    image_path = paths["image"]
    if not image_path.is_file():
        reject(image_path, f"is listed in {listed_in} but does not exist", report, skip_bad)
    if not any(label in paths for label in LABELS):
        report.unmatched_images.append(str(image_path))
        return None
    image = read_gray(image_path, report, skip_bad)
    masks = {}
    for label in LABELS:
        if label not in paths:
            report.notes.append(f"{image_path}: no {label} contour map in {listed_in}")
            continue
        try:
            if not paths[label].is_file():
                reject(paths[label], f"is listed in {listed_in} but does not exist", report, skip_bad)
            mask = read_map(paths[label], image_path, image.shape, report, skip_bad)
        except _SkippedRow:  # a bad map, recorded with skip_bad: the row keeps its other label
            report.notes.append(f"{image_path}: its {label} contour map was skipped, so the sample has no {label}")
            continue
        if mask is not None:
            masks[label] = mask
    if not masks:
        report.notes.append(f"{image_path}: none of its contour maps could be filled; image not used")
        return None
    note_unnested(image_path.stem, masks, *LABELS, report)
    return make_sample(image_path, image, masks, paths)


def read_map(
    path: Path, image_path: Path, image_shape: tuple[int, ...], report: ReadReport, skip_bad: bool
) -> np.ndarray | None:
    """A filled contour map: bool (H, W), or None when it cannot be filled (listed in ``report.unfillable``)."""
    contour_map = read_gray(path, report, skip_bad)
    if contour_map.shape != image_shape:
        sizes = f"{shape_text(contour_map.shape)} but its image {image_path.name} is {shape_text(image_shape)}"
        reject(path, f"contour map is {sizes}", report, skip_bad)
    filled = fill_contour_map(contour_map)
    if filled is None:
        report.unfillable.append(str(path))
    return filled


def read_gray(path: Path, report: ReadReport, skip_bad: bool) -> np.ndarray:
    """An image file as float32 (H, W) grey levels (a bad file is rejected: :func:`reject`)."""
    try:
        pixels = read_pixels(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # Pillow reports a broken PNG chunk as SyntaxError and an unknown format as OSError.
        reject(path, f"cannot be read as an image ({exc})", report, skip_bad)
    gray = to_gray(pixels)
    if gray is None:
        reject(path, f"is not a grey-level or colour image (array shape {shape_text(pixels.shape)})", report, skip_bad)
    return gray


def read_pixels(path: Path) -> np.ndarray:
    """The pixel array of an image file: (H, W) grey, (H, W, 2) grey+alpha or (H, W, 3|4) RGB(A).

    Palette, bi-level and other colour modes are expanded to RGB first, so grey levels are looked up.
    """
    with Image.open(path) as picture:
        # 16-bit grey in any byte order (ImageJ writes big-endian "I;16B" TIFFs) is read as stored:
        # converted to RGB it would clip to 255.
        if picture.mode not in ("L", "LA", "RGB", "RGBA", "I", "F") and not picture.mode.startswith("I;16"):
            picture = picture.convert("RGB")
        return np.array(picture)


def to_gray(pixels: np.ndarray) -> np.ndarray | None:
    """float32 (H, W) grey levels of an (H, W), (H, W, 2) grey+alpha or (H, W, 3|4) RGB(A) array; None otherwise."""
    if pixels.ndim == 2:
        return pixels.astype(np.float32)
    if pixels.ndim == 3 and pixels.shape[2] == 2:
        return pixels[:, :, 0].astype(np.float32)
    if pixels.ndim == 3 and pixels.shape[2] in (3, 4):
        return (pixels[:, :, :3].astype(np.float64) @ LUMA_WEIGHTS).astype(np.float32)
    return None


def make_sample(image_path: Path, image: np.ndarray, masks: dict[str, np.ndarray], paths: dict[str, Path]) -> Sample:
    """A :class:`Sample` named after the image (id, patient, frame, slice and phase: module docstring)."""
    stem = image_path.stem
    patient, _, rest = stem.partition("-")
    frame_text = rest.split("-")[0]
    frame = int(frame_text) if frame_text.isdigit() else None
    slice_id, phase = "", "unknown"
    if RVSC_NAME.match(stem) and frame is not None:
        slice_id = str(frame // RVSC_FRAMES_PER_SLICE)
        phase = "ED" if frame % RVSC_FRAMES_PER_SLICE == 0 else "ES"
    return Sample(
        id=stem,
        patient=patient,
        image=image,
        masks=masks,
        spacing_mm=None,
        slice=slice_id,
        frame=frame,
        phase=phase,
        sources={role: str(path) for role, path in paths.items()},
    )


def drop_odd_sizes(samples: list[Sample], report: ReadReport, skip_bad: bool) -> list[Sample]:
    """Samples whose image size is the most common one of their patient; the others are bad files."""
    sizes: dict[str, Counter] = {}
    for sample in samples:
        sizes.setdefault(sample.patient, Counter())[sample.shape] += 1
    kept = []
    for sample in samples:
        usual = sizes[sample.patient].most_common(1)[0][0]
        if sample.shape == usual:
            kept.append(sample)
            continue
        others = f"the other images of patient {sample.patient} are {shape_text(usual)}"
        report.bad_file(sample.sources["image"], f"image is {shape_text(sample.shape)} but {others}", skip_bad)
    return kept


def note_unlisted_files(
    root: Path, manifest: Path, rows: list[tuple[int, dict[str, Path]]], report: ReadReport
) -> None:
    """Add a note naming the image files of ``root`` that the manifest does not list."""
    listed = {path.resolve() for _, paths in rows for path in paths.values()} | {manifest.resolve()}
    unlisted = sorted(
        path.name
        for path in root.iterdir()
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
        and path.resolve() not in listed
    )
    if unlisted:
        shown = ", ".join(unlisted[:5]) + (", ..." if len(unlisted) > 5 else "")
        report.notes.append(f"{root}: {len(unlisted)} image file(s) not listed in {manifest.name}: {shown}")


def shape_text(shape: tuple[int, ...]) -> str:
    """``"H x W"`` for an array shape."""
    return " x ".join(str(size) for size in shape)

"""The registry of on-disk layouts, and ``--format auto`` detection.

Each layout has a reader ``read(root, **options) -> ReadReport`` and a cheap ``looks_like(root)``
check that only globs. Detection tries them in registry order and names what it looked for when
none matches.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rvseg.checks import check_exists
from rvseg.data.acdc import looks_like_acdc, read_acdc
from rvseg.data.pngpairs import looks_like_pngpairs, read_pngpairs
from rvseg.data.rvsc import looks_like_rvsc, read_rvsc
from rvseg.data.sample import ReadReport, note_copied_annotations
from rvseg.data.sunnybrook import looks_like_sunnybrook, read_sunnybrook
from rvseg.errors import ConfigError, DataError


@dataclass(frozen=True)
class Layout:
    name: str
    read: Callable[..., ReadReport]
    looks_like: Callable[[Path], bool]
    expects: str  # what detection looks for, for the "matches no layout" message


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("rvsc", read_rvsc, looks_like_rvsc,
               "RVSC: patientNN/PNNdicom/*.dcm with PNNcontours-manual/*-{i,o}contour-manual.txt"),
        Layout("sunnybrook", read_sunnybrook, looks_like_sunnybrook,
               "Sunnybrook: link.csv, dicoms/<patient>/<N>.dcm, contourfiles/<id>/{i,o}-contours/; or the "
               "challenge / Cardiac Atlas downloads, <case>/contours-manual/IRCCI-expert/ and IM-SSSS-NNNN.dcm"),
        Layout("pngpairs", read_pngpairs, looks_like_pngpairs,
               "contour maps: a CSV manifest (image, i-contour map, o-contour map) beside the images, or "
               "<stem>-icontour-manual.png maps beside <stem>.png"),
        Layout("acdc", read_acdc, looks_like_acdc,
               "ACDC: patientNNN/patientNNN_frameFF.nii.gz with patientNNN_frameFF_gt.nii.gz"),
    )
}


def check_data_folder(root: str | Path) -> Path:
    """``root`` as a Path; DataError when it is missing or not a folder."""
    root = Path(root)
    check_exists(root)
    if not root.is_dir():
        raise DataError("expected a folder holding a data set", root)
    return root


def detect_format(root: str | Path) -> str:
    """Name of the layout ``root`` is in; DataError listing what was looked for if none."""
    root = check_data_folder(root)
    for layout in LAYOUTS.values():
        if layout.looks_like(root):
            return layout.name
    looked_for = "; ".join(layout.expects for layout in LAYOUTS.values())
    raise DataError(f"matches no known layout. Looked for: {looked_for}", root)


def read_dataset(root: str | Path, format: str = "auto", **options) -> ReadReport:
    """Read any supported layout into a :class:`ReadReport`.

    Args:
        root: the data folder.
        format: a key of :data:`LAYOUTS`, or ``"auto"``.
        options: reader options (``skip_bad``, ``labels``...); each reader receives those it takes.
    """
    if format != "auto" and format not in LAYOUTS:
        raise ConfigError(f"unknown format {format!r}; choose one of auto, {', '.join(LAYOUTS)}")
    root = check_data_folder(root)
    reader = LAYOUTS[detect_format(root) if format == "auto" else format].read
    accepted = inspect.signature(reader).parameters
    report = reader(root, **{k: v for k, v in options.items() if k in accepted and v is not None})
    note_copied_annotations(report)
    return report

"""Finding a layout's folders below the folder a user points at (a download's root, a set, a patient)."""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from rvseg.data.sample import ReadReport
from rvseg.errors import DataError

#: Folders never searched: archive and operating-system leftovers (``__MACOSX`` copies of a zip's
#: tree would otherwise count every case twice).
IGNORED_FOLDERS = re.compile(r"__MACOSX|\..*")


def files_named(folder: Path, pattern: str) -> list[Path]:
    """The files of ``folder`` whose names match the glob ``pattern`` in any case, sorted; [] when it is
    no folder. Exports from Windows or a PACS write ``.DCM`` or upper-case names, which the layouts'
    specifications do not exclude. Dot files (macOS ``._`` resource forks) are left out."""
    if not folder.is_dir():
        return []
    pattern = pattern.lower()
    return sorted(path for path in folder.iterdir() if not path.name.startswith(".")
                  and fnmatch.fnmatchcase(path.name.lower(), pattern) and path.is_file())


def existing_ignoring_case(path: Path) -> Path:
    """``path`` as it is spelled on disk where its names differ from it only in letter case
    (``P09DICOM`` for ``P09dicom``); ``path`` itself when it exists, or when no such match does.

    Raises:
        DataError: two names on disk match it in different cases (``P09DICOM`` and ``P09dicom``), so
            which one is meant is ambiguous.
    """
    if path.exists() or path.parent == path:
        return path
    parent = existing_ignoring_case(path.parent)
    try:
        matches = sorted(child for child in parent.iterdir() if child.name.lower() == path.name.lower())
    except OSError:  # no folder there, or not readable
        matches = []
    if len(matches) > 1:
        raise DataError(f"{' and '.join(match.name for match in matches)} differ only in letter case; which one "
                        f"holds {path.name} is ambiguous: keep one", parent)
    return matches[0] if matches else parent / path.name


def subfolders(root: Path, depth: int) -> list[Path]:
    """``root``'s subfolders down to ``depth`` levels, breadth first and sorted per level."""
    return [folder for level in _levels(root, depth, lambda folder: True) for folder in level]


def named_folders(root: Path, name: re.Pattern[str], depth: int) -> list[Path]:
    """``[root]`` when its name matches ``name``; else the folders down to ``depth`` levels whose names
    match, without looking inside them (a patient folder's own subfolders are not searched)."""
    if name.fullmatch(root.name):
        return [root]
    found = [folder for level in _levels(root, depth, lambda f: not name.fullmatch(f.name)) for folder in level
             if name.fullmatch(folder.name)]
    return sorted(found, key=lambda folder: (folder.name.lower(), str(folder)))


def unique_folders(folders: list[Path], key: Callable[[Path], str], report: ReadReport, skip_bad: bool) -> list[Path]:
    """``folders`` without a second folder of the same patient (``key``), which is a bad file: two
    copies of one patient (a training and a test set, say) make every id ambiguous."""
    seen: dict[str, Path] = {}
    for folder in folders:
        name = key(folder)
        if name in seen:
            report.bad_file(folder, f"patient {name} was already read from {seen[name]}", skip_bad)
        else:
            seen[name] = folder
    return list(seen.values())


def _levels(root: Path, depth: int, descend: Callable[[Path], bool]) -> Iterator[list[Path]]:
    """Breadth first, one sorted list per level; only folders for which ``descend`` holds are entered.
    Symbolic links to folders are followed, each real folder entered once (no loops)."""
    visited = {_identity(root)}
    level = [root]
    for _ in range(depth):
        children = []
        for folder in level:
            for child in _children(folder):
                identity = _identity(child)
                if identity is not None and identity not in visited:
                    visited.add(identity)
                    children.append(child)
        level = sorted(children)
        yield level
        level = [folder for folder in level if descend(folder)]


def _children(folder: Path) -> list[Path]:
    # scandir's entries know their type without a stat per file: image folders hold thousands.
    try:
        with os.scandir(folder) as entries:
            return [Path(entry.path) for entry in entries
                    if entry.is_dir() and not IGNORED_FOLDERS.fullmatch(entry.name)]
    except OSError:
        return []


def _identity(folder: Path) -> tuple[int, int] | None:
    try:
        status = folder.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino

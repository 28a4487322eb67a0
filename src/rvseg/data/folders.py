"""Finding a layout's folders below the folder a user points at (a download's root, a set, a patient)."""

from __future__ import annotations

import os
import re
from pathlib import Path


def subfolders(root: Path, depth: int) -> list[Path]:
    """``root``'s subfolders down to ``depth`` levels, breadth first and sorted per level (symbolic
    links and unreadable folders are not entered)."""
    found: list[Path] = []
    level = [root]
    for _ in range(depth):
        level = sorted(child for folder in level for child in _children(folder))
        found += level
    return found


def named_folders(root: Path, name: re.Pattern[str], depth: int) -> list[Path]:
    """``[root]`` when its name matches ``name``; else the folders down to ``depth`` levels whose names
    match, without looking inside them (a patient folder's own subfolders are not searched)."""
    if name.fullmatch(root.name):
        return [root]
    found: list[Path] = []
    level = [root]
    for _ in range(depth):
        folders = sorted(child for folder in level for child in _children(folder))
        found += [folder for folder in folders if name.fullmatch(folder.name)]
        level = [folder for folder in folders if not name.fullmatch(folder.name)]
    return sorted(found, key=lambda folder: (folder.name.lower(), str(folder)))


def _children(folder: Path) -> list[Path]:
    # scandir's entries know their type without a stat per file: image folders hold thousands.
    try:
        with os.scandir(folder) as entries:
            return [Path(entry.path) for entry in entries if entry.is_dir(follow_symlinks=False)]
    except OSError:
        return []

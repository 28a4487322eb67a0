"""Atomic file output: write to a temporary file beside the target, then rename.

A crash, a full disk or a Ctrl-C therefore never leaves a half-written file under the final name.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rvseg.errors import DataError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it to ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would keep reports and models from colleagues
    try:
        yield Path(tmp)
        # Flush to disk before the rename, so a power loss cannot leave an empty file under the name.
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def current_umask() -> int:
    """The process's file-creation mask (read by setting it, then restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text exactly as given (no newline translation), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")


def json_safe(value):
    """A copy of nested dicts/lists with NaN floats replaced by None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def read_json(path: str | Path) -> dict | None:
    """A JSON object written by :func:`write_json`, or None when the file does not exist.

    Raises:
        DataError: the file cannot be read or holds no JSON object (a damaged run or sweep record).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read this JSON file ({exc})", path) from None
    if not isinstance(data, dict):
        raise DataError("this JSON file holds no object (damaged?)", path)
    return data


def write_json(path: str | Path, data) -> None:
    """Write ``data`` as indented JSON (NaN as null, unknown types as strings), atomically."""
    write_text(path, json.dumps(json_safe(data), indent=2, default=str) + "\n")


def csv_cell(value) -> str:
    """How a value is written to CSV: floats with 6 significant digits, None and NaN as empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_csv(path: str | Path, rows, fieldnames=None) -> None:
    """Rows (dicts) to CSV, atomically; columns are ``fieldnames`` or the first row's keys."""
    fieldnames = list(fieldnames or (rows[0] if rows else []))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames)
    writer.writeheader()
    for row in rows:
        writer.writerow({key: csv_cell(row.get(key)) for key in fieldnames})
    write_text(path, buffer.getvalue())


def new_figure(*args, figsize: tuple[float, float], **kwargs):
    """``(figure, axes)``: a matplotlib figure and ``Figure.subplots(*args, **kwargs)``, made without
    pyplot, so no backend is chosen or switched (a notebook's own plotting is left as it is)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    return figure, figure.subplots(*args, **kwargs)


def save_figure(figure, path: str | Path, **kwargs) -> None:
    """Save a matplotlib figure atomically."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", **kwargs)


def checksum(*parts: str | Path | bytes) -> str:
    """Short SHA-256 (16 hex digits) of the concatenated bytes of ``parts``: files, or bytes as given."""
    import hashlib

    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, bytes):
            digest.update(part)
            continue
        with open(part, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


#: The file every output folder of ``rvseg prepare`` (``dataset.json``), ``evaluate``, ``predict`` and
#: ``train`` (``summary.json``) has at its top: what ``--force`` may replace.
OUTPUT_MARKERS = ("dataset.json", "summary.json")


def check_output_folder(out: str | Path, force: bool, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse (DataError) an output folder that cannot be written or replaced safely.

    Refused: a file, or a path under a file; a symbolic link (replacing it would replace the link, not
    the folder it names); a place without write permission; a non-empty folder unless ``force``; and,
    even with ``force``, a folder that is or holds the current folder or one of ``inputs`` (the data or
    model being read), because replacing it would delete them, and a non-empty folder that is no rvseg
    output (none of :data:`OUTPUT_MARKERS` at its top: a folder of the user's own files, or one holding
    several outputs). "Holds" is decided by file identity, so a second name for a folder (a link, a
    bind mount, other letter case on a case-insensitive disk) does not get past it.
    """
    from rvseg.errors import DataError

    out = Path(os.path.abspath(out))  # "." and ".." by their real names: the work happens beside out
    if out.exists() and not out.is_dir():
        raise DataError("output exists and is not a folder", out)
    if out.is_symlink():
        raise DataError("output is a symbolic link; give the folder it points to", out)
    # The temporary folder is made beside out, and out is replaced there: both places must be writable.
    _check_place(out)
    if out.exists() and not os.access(out, os.W_OK):
        raise DataError(f"cannot write in {out} (no permission, or a read-only file system)", out)
    if _holds(out, Path.cwd()):
        raise DataError("output folder is or holds the current folder; choose another --out", out)
    for path in inputs:
        if _holds(out, Path(path)):
            raise DataError(f"output folder is or holds the input {path}; writing it would delete that input "
                            "(choose another --out)", out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise DataError("output folder exists and is not empty (use --force, or force=True in Python, to "
                            "replace it)", out)
        if not any((out / marker).is_file() for marker in OUTPUT_MARKERS):
            raise DataError(f"output folder holds files that are no rvseg output (no {' or '.join(OUTPUT_MARKERS)} "
                            "in it), and --force replaces only an earlier output: choose another --out, or empty "
                            "it yourself", out)


def check_output_file(path: str | Path) -> None:
    """Refuse (DataError), before any work, an output file that cannot be written: a folder, a path
    under a file, or a place without write permission."""
    from rvseg.errors import DataError

    path = Path(os.path.abspath(path))
    if path.is_dir():
        raise DataError("output is a folder, not a file", path)
    _check_place(path)


def _check_place(path: Path) -> None:
    """Refuse an absolute output ``path`` that lies under a file, or whose nearest existing folder
    (where it, or a temporary beside it, is written) is not writable: said now, not after the work."""
    from rvseg.errors import DataError

    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise DataError(f"output lies under {parent}, which is a file, not a folder", path)
    beside = next((folder for folder in path.parents if folder.exists()), path)
    if not os.access(beside, os.W_OK):
        raise DataError(f"cannot write in {beside} (no permission, or a read-only file system)", path)


def _holds(folder: Path, path: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it, by file identity (device and inode) of
    ``folder`` and of ``path`` and each of its existing ancestors."""
    try:
        target = os.stat(folder)
    except OSError:  # no folder yet: it holds nothing
        return False
    for place in (path, *Path(os.path.abspath(path)).parents):
        try:
            found = os.stat(place)
        except OSError:
            continue
        if (found.st_dev, found.st_ino) == (target.st_dev, target.st_ino):
            return True
    return False


@contextmanager
def atomic_folder(out: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; if the block succeeds it replaces ``out`` whole.

    Callers check the output first (:func:`check_output_folder`), so replacing is what the user asked.
    """
    import shutil

    from rvseg.errors import DataError

    out = Path(os.path.abspath(out))  # the parent of "." is the folder above, not "." itself
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
        os.chmod(tmp, 0o777 & ~current_umask())  # as mkdir would make it, not mkdtemp's 0700
    except OSError as exc:  # named after the output asked for, not the temporary folder
        raise DataError(f"cannot create the output folder ({exc.strerror or exc})", out) from None
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

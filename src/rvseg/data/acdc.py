"""ACDC (MICCAI 2017 Automated Cardiac Diagnosis Challenge) NIfTI volumes.

Layout: ``root`` is a ``patientNNN/`` folder, or holds them up to three levels down (the download's
``database/training/`` and ``database/testing/``), each with

* ``patientNNN_frameFF.nii.gz``: one 3D short-axis volume per annotated time frame ``FF``;
* ``patientNNN_frameFF_gt.nii.gz``: its label volume, 0 = background, 1 = RV cavity,
  2 = LV myocardium, 3 = LV cavity (label names ``rv``, ``myo``, ``lv``);
* ``Info.cfg``: ``key: value`` lines, among them ``ED: 1`` and ``ES: 12``, the frame numbers of
  end-diastole and end-systole.

The whole cine ``patientNNN_4d.nii.gz`` is not read (its annotated frames are the files above).
Uncompressed ``.nii`` files are read as well.

**Orientation.** A volume's voxel array has axes (i, j, k), k across the short-axis slices. The 2D
sample of slice ``z`` is ``data[:, :, z]`` as stored, not rotated for display: rows run along i and
columns along j, so ``spacing_mm = (zooms[0], zooms[1])`` of ``header.get_zooms()`` and the slice
thickness is ``zooms[2]``. Image and masks are cut the same way, so they always agree. A slice's
``slice_location`` is its plane's position along the plane normal in mm, from the image's affine
(so slice spacings, and with them volumes, follow from the header).

One sample per slice of each frame that has a ground truth, with id ``patientNNN-frameFF-sliceZZ``;
a slice whose ground truth is empty is still a sample (all its masks are empty).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from rvseg.data.folders import named_folders, unique_folders
from rvseg.data.nifti import NiftiVolume, read_nifti, slice_locations
from rvseg.data.sample import ReadReport, Sample
from rvseg.errors import DataError

LABELS = ("rv", "myo", "lv")
#: Label value of each label name in the ground-truth volumes.
LABEL_VALUES = {"rv": 1, "myo": 2, "lv": 3}


def exclusive_labels(labels) -> bool:
    """Whether ``labels`` are several of ACDC's, which cannot overlap (one structure per voxel)."""
    return len(labels) > 1 and set(labels) <= set(LABEL_VALUES)


PATIENT_FOLDER = re.compile(r"patient\d+")
#: How far below ``root`` patient folders are looked for (the download's ``database/training/``).
PATIENT_SEARCH_DEPTH = 3
FRAME_FILE = re.compile(r"^(?P<patient>patient\d+)_frame(?P<frame>\d+)(?P<gt>_gt)?\.nii(\.gz)?$")


def looks_like_acdc(root: str | Path) -> bool:
    """Whether ``root`` is, or holds, a ``patientNNN`` folder with ``patientNNN_frameFF[_gt].nii[.gz]`` files."""
    root = Path(root)
    return root.is_dir() and any(frame_files(folder) for folder in patient_folders(root))


def read_acdc(root: str | Path, *, skip_bad: bool = False) -> ReadReport:
    """Read ACDC patient folders (module docstring).

    Args:
        root: a folder of ``patientNNN/`` folders, or one patient folder.
        skip_bad: record bad files in ``report.skipped`` and go on, instead of raising.

    Returns:
        a :class:`ReadReport` with format ``acdc`` and labels ``("rv", "myo", "lv")``. Each sample's
        image is float32 (H, W) = (size along i, size along j); each mask bool (H, W). Frames without
        a ground truth are in ``unmatched_images``, ground truths without their frame in
        ``unmatched_contours``.

    Raises:
        DataError: ``root`` holds no patient folder with frame files; and, unless ``skip_bad``, an
            unreadable volume or ``Info.cfg``, a ground truth with label values outside {0, 1, 2, 3}
            or whose shape differs from its image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("is not a folder (expected ACDC patientNNN folders)", root)
    folders = folders_with_frames(root)
    if not folders:
        raise DataError("holds no patientNNN folder with patientNNN_frameFF.nii.gz files (ACDC layout)", root)
    report = ReadReport(format="acdc", labels=LABELS)
    for folder in unique_folders(folders, lambda folder: folder.name, report, skip_bad):
        report.samples.extend(read_patient(folder, report, skip_bad))
    report.samples.sort(key=lambda sample: sample.id)
    return report


def patient_folders(root: Path) -> list[Path]:
    """``root`` itself when it is a patient folder, else the ``patientNNN`` folders below it, up to
    :data:`PATIENT_SEARCH_DEPTH` levels (``database/training/patient001``)."""
    return named_folders(root, PATIENT_FOLDER, PATIENT_SEARCH_DEPTH)


def folders_with_frames(root: Path) -> list[Path]:
    """The patient folders of ``root`` (:func:`patient_folders`) that hold frame files."""
    return [folder for folder in patient_folders(root) if frame_files(folder)]


def frame_files(folder: Path, report: ReadReport | None = None, skip_bad: bool = True) -> dict[tuple[int, bool], Path]:
    """``(frame number, is ground truth) -> path`` for the frame files of one patient folder.

    A second file of one frame (``_frame01.nii`` beside ``_frame01.nii.gz``) is left out, through
    ``report.bad_file`` when a report is given: which one holds the frame is not knowable.
    """
    found: dict[tuple[int, bool], Path] = {}
    for path in sorted(folder.iterdir()):
        match = FRAME_FILE.match(path.name)
        if match and match["patient"] == folder.name and path.is_file():
            key = (int(match["frame"]), match["gt"] is not None)
            if key not in found:
                found[key] = path
            elif report is not None:
                report.bad_file(path, f"a second file of frame {key[0]}{' (ground truth)' if key[1] else ''} "
                                      f"(the other: {found[key].name}); keep one", skip_bad)
    return found


def read_patient(folder: Path, report: ReadReport, skip_bad: bool) -> list[Sample]:
    """The samples of one patient folder; unmatched and bad files go to ``report``."""
    files = frame_files(folder, report, skip_bad)
    phases = read_phases(folder / "Info.cfg", report, skip_bad)
    report.notes += phase_frames_missing(folder, phases, {frame for frame, is_gt in files if not is_gt})
    samples = []
    for (frame, is_gt), path in sorted(files.items()):
        if is_gt and (frame, False) not in files:
            report.unmatched_contours.append(str(path))
        elif not is_gt and (frame, True) not in files:
            report.unmatched_images.append(str(path))
        elif not is_gt:
            samples.extend(read_frame(folder.name, frame, path, files[(frame, True)], phases, report, skip_bad))
    return samples


def read_phases(path: Path, report: ReadReport, skip_bad: bool) -> dict[int, str]:
    """``frame number -> "ED"/"ES"`` from an ``Info.cfg`` (empty, with a note or a bad file in ``report``,
    when the file is missing or skipped)."""
    if not path.is_file():
        report.notes.append(f"{path}: missing, so the phases (ED, ES) of {path.parent.name}'s frames are unknown")
        return {}
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        report.bad_file(path, f"cannot read ({exc.__class__.__name__}: {exc})", skip_bad)
        return {}
    phases = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() not in ("ED", "ES"):
            continue
        try:
            number = float(value)  # "ED: 1.0" as some converters write it is frame 1
            if not number.is_integer():
                raise ValueError(value)
        except ValueError:
            report.bad_file(path, f"{key.strip()} should be a frame number, not {value.strip()!r}", skip_bad)
            return {}
        if phases.get(int(number), key.strip()) != key.strip():
            report.bad_file(path, f"ED and ES are both frame {int(number)}", skip_bad)
            return {}
        phases[int(number)] = key.strip()
    missing = [phase for phase in ("ED", "ES") if phase not in phases.values()]
    if missing:
        report.notes.append(f"{path}: gives no {' or '.join(missing)} frame, so {path.parent.name} has no "
                            f"{' or '.join(missing)} volume and no EF")
    return phases


def phase_frames_missing(folder: Path, phases: dict[int, str], frames: set[int]) -> list[str]:
    """Notes for the ED/ES frames an ``Info.cfg`` names that have no frame volume in ``folder``."""
    return [f"{folder.name}: Info.cfg gives {phase} as frame {frame}, which has no frame volume "
            f"({folder.name}_frame{frame:02d}.nii.gz)"
            for frame, phase in sorted(phases.items()) if frame not in frames]


def read_frame(
    patient: str,
    frame: int,
    image_path: Path,
    gt_path: Path,
    phases: dict[int, str],
    report: ReadReport,
    skip_bad: bool,
) -> list[Sample]:
    """One sample per slice of a frame with a ground truth; [] when a file is bad (and skipped)."""
    loaded = load_volume(image_path, report, skip_bad)
    if loaded is None:
        return []
    image, zooms, affine = loaded
    loaded = load_volume(gt_path, report, skip_bad)
    if loaded is None:
        return []
    labels, gt_affine = loaded[0], loaded[2]
    if labels.shape != image.shape:
        shapes = f"{labels.shape} but its image {image_path.name} has {image.shape}"
        report.bad_file(gt_path, f"has shape {shapes}", skip_bad)
        return []
    if not np.allclose(gt_affine, affine, rtol=1e-3, atol=0.1):
        # The voxel grids are what is matched; a viewer would show this ground truth elsewhere.
        report.notes.append(f"{gt_path}: its affine differs from its image {image_path.name}'s (the voxels are "
                            "matched by index; in a viewer the two would not overlay)")
    unexpected = np.setdiff1d(np.unique(labels), [0, *LABEL_VALUES.values()])
    if unexpected.size:
        shown = ", ".join(f"{value:g}" for value in unexpected[:5])
        report.bad_file(gt_path, f"holds label values outside {{0, 1, 2, 3}}: {shown}", skip_bad)
        return []
    locations = slice_locations(affine, image.shape[2])
    return [
        Sample(
            id=f"{patient}-frame{frame:02d}-slice{z:02d}",
            patient=patient,
            image=np.ascontiguousarray(image[:, :, z]),
            masks={name: labels[:, :, z] == value for name, value in LABEL_VALUES.items()},
            spacing_mm=(zooms[0], zooms[1]),
            slice=str(z),
            frame=frame,
            phase=phases.get(frame, "unknown"),
            slice_location=locations[z],
            slice_thickness_mm=zooms[2] if len(zooms) > 2 else None,
            sources={"image": str(image_path), **{name: str(gt_path) for name in LABELS}},
        )
        for z in range(image.shape[2])
    ]


def load_volume(
    path: Path, report: ReadReport, skip_bad: bool
) -> tuple[np.ndarray, tuple[float, ...], np.ndarray] | None:
    """:func:`read_frame_volume` as (float32 (I, J, K) data, voxel sizes in mm, float (4, 4) affine);
    None when the file is bad (and skipped). A 2D image is one slice (K = 1) and then has only two
    voxel sizes."""
    try:
        volume = read_frame_volume(path)
    except DataError as error:
        report.bad_file(path, error.message, skip_bad)
        return None
    report.notes += volume.notes
    return volume.data, volume.zooms[:3], volume.affine


def read_frame_volume(path: Path) -> NiftiVolume:
    """One frame's volume (:func:`~rvseg.data.nifti.read_nifti`), which must be 3D (or a 2D slice).

    Raises:
        DataError: the file cannot be read, or is a 4D cine.
    """
    volume = read_nifti(path)
    if volume.data.ndim != 3:
        raise DataError(f"is not a 3D volume (shape {volume.data.shape})", path)
    return volume

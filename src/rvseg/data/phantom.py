"""A synthetic short-axis cine phantom written in the RVSC-MICCAI 2012 native layout.

**This is synthetic data.** Every image and contour written here is drawn by this module from
random geometric shapes; none of it comes from a patient or a scanner. It exists so that the demo
and the tests can run the real reading, training and prediction path without a download. Never
present it, or any result obtained on it, as real cardiac MRI. Every DICOM file says so in its
ImageComments and SeriesDescription, and ``phantom.json`` in its ``generator`` field.

Layout written under ``out`` (NN = 01.., FFFF = running index over slices x frames, slice-major as
in RVSC: files 0..frames-1 are slice 0 over the cardiac cycle, then slice 1, ...)::

    patientNN/PNNdicom/PNN-FFFF.dcm                               MR Image Storage, uint16
    patientNN/PNNcontours-manual/PNN-FFFF-icontour-manual.txt      RV endocardium (cavity)
    patientNN/PNNcontours-manual/PNN-FFFF-ocontour-manual.txt      RV epicardium (cavity + wall)
    patientNN/PNNlist.txt                                          the contour files, Windows paths
    phantom.json                                                   :class:`PhantomSummary`

Contours exist for end-diastole (frame 0 of each slice) and end-systole (one frame per patient,
at 35-45 % of the cycle) of every slice where the RV is present; the RV shrinks toward the apex
and, for some patients, is absent on the most apical slice.

Anatomy of one frame (all sizes in mm, so the heart keeps its physical size whatever the pixel
spacing): a body outline with a bright subcutaneous fat layer, two dark lungs either side of the
mediastinum, a vertebral body and a bright descending aorta behind the heart; the LV as a bright
ellipse (with two papillary muscles) inside a dark myocardial ring; the RV cavity as a bright
crescent that wraps part of the LV on one side, bounded on the septal side by the LV epicardium and
on the free side by a thin wall. The image is then given a smooth texture, a smooth multiplicative
bias field and Rician noise. Each patient has its own pose (rotation, translation, size, RV angle),
heart rate, ES frame and ejection fractions; both ventricles contract smoothly through the cycle.

The written contours are the exact boundaries of what is drawn: the RV cavity and wall are painted
from the very polygons written to the contour files (rounded to the 6 decimals the files hold),
rasterised with :func:`~rvseg.data.contours.polygon_to_mask`, so a reader's masks are exactly the
bright RV cavity and the cavity plus its wall.

Geometry of the DICOM tags: slices are ``SLICE_THICKNESS_MM`` apart (SliceThickness =
SpacingBetweenSlices, no gap), base first; ``SliceLocation`` is ImagePositionPatient projected on
the slice normal (row direction x column direction); TriggerTime is ``frame * RR / frames`` ms, so
end-diastole is at 0 ms.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from scipy.ndimage import gaussian_filter

from rvseg.checks import is_finite_number, is_whole_number
from rvseg.data.contours import polygon_area, polygon_to_mask, write_contour_file
from rvseg.errors import ConfigError, DataError
from rvseg.io import write_text

#: Slice thickness and distance between slice centres (no gap), in mm.
SLICE_THICKNESS_MM = 7.0
#: Name of the summary file written at the root of a phantom folder.
PHANTOM_JSON = "phantom.json"
#: ``generator`` field of ``phantom.json``; how a previous phantom folder is recognised.
GENERATOR = "rvseg synthetic phantom (synthetic data, not patient data)"
#: Contour files hold between these many points (RVSC manual contours hold a few hundred).
CONTOUR_POINTS = (100, 400)
#: Heart contours must stay at least this far (pixels) inside the image.
IMAGE_MARGIN_PX = 2.0

_PATIENT_FOLDER = re.compile(r"patient\d{2}")
#: Contour files hold 6 decimals; polygons are rounded to them before they are drawn.
_CONTOUR_DECIMALS = 6
#: Samples along each arc of a crescent before resampling to the contour's point count.
_DENSE_ARC_SAMPLES = 720
#: Vertices of the LV outlines (never written; few keep the rasterisation fast) and muscles.
_LV_SAMPLES = 96
_PAPILLARY_SAMPLES = 24
_BISECTION_STEPS = 24
_SYNTHETIC_NOTE = "SYNTHETIC PHANTOM written by rvseg - not patient data"


@dataclass(frozen=True)
class PatientTruth:
    """Ground truth of one phantom patient, computed from the contour files written.

    Attributes:
        patient: ``"P01"``, ...
        es_frame: the end-systolic frame within each slice's cycle (end-diastole is frame 0).
        heart_rate_bpm: heart rate; the RR interval is ``60000 / heart_rate_bpm`` ms.
        annotated_slices: slice indices (0 = base) that carry ED and ES contours.
        ed_areas_px: RV cavity pixel count (mask of the ED i-contour) per annotated slice.
        es_areas_px: the same at ES.
        ed_volume_ml: RV end-diastolic volume, sum of ED areas x pixel area x slice thickness.
        es_volume_ml: RV end-systolic volume, computed the same way.
        ef_percent: RV ejection fraction, ``100 * (ed - es) / ed``.
    """

    patient: str
    es_frame: int
    heart_rate_bpm: float
    annotated_slices: tuple[int, ...]
    ed_areas_px: tuple[int, ...]
    es_areas_px: tuple[int, ...]
    ed_volume_ml: float
    es_volume_ml: float
    ef_percent: float


@dataclass
class PhantomSummary:
    """What :func:`write_phantom` wrote (also saved as ``out/phantom.json``).

    Attributes:
        out: the phantom folder.
        seed: the random seed; the same seed and options give byte-identical files.
        patients: number of patients.
        slices: slices per patient (slice 0 is the base).
        frames: frames per slice over one cardiac cycle.
        shape: (H, W) of every image.
        spacing_mm: pixel spacing (rows and columns) in mm.
        slice_thickness_mm: slice thickness = distance between slice centres, in mm.
        dicom_files: number of DICOM files written.
        contour_files: number of contour files written.
        files_written: every file written, ``phantom.json`` and the list files included.
        annotated_samples: number of (slice, frame) images with contours (each has both contours).
        truth: per patient the true RV volumes and EF.
    """

    out: Path
    seed: int
    patients: int
    slices: int
    frames: int
    shape: tuple[int, int]
    spacing_mm: float
    slice_thickness_mm: float
    dicom_files: int
    contour_files: int
    files_written: int
    annotated_samples: int
    truth: list[PatientTruth] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready form, with the ``generator`` marker and ``complete: true``."""
        data = asdict(self)
        data["out"] = str(self.out)
        data["shape"] = list(self.shape)
        return {"generator": GENERATOR, "complete": True, "folders": _patient_folders(self.patients), **data}


#: :class:`PatientTruth` fields that JSON stores as lists.
_TUPLE_FIELDS = ("annotated_slices", "ed_areas_px", "es_areas_px")


def load_phantom_summary(out: str | Path) -> PhantomSummary:
    """Read ``out/phantom.json`` back as a :class:`PhantomSummary`.

    Raises:
        DataError: no ``phantom.json``, not one written by :func:`write_phantom`, or an unfinished one.
    """
    path = Path(out) / PHANTOM_JSON
    data = _read_phantom_json(path)
    if data is None:
        raise DataError("not a phantom summary written by rvseg (missing, unreadable or foreign)", path)
    if not data.get("complete"):
        raise DataError("the phantom was not written to the end; write it again", path)
    try:
        return PhantomSummary(
            out=Path(out),
            seed=int(data["seed"]),
            patients=int(data["patients"]),
            slices=int(data["slices"]),
            frames=int(data["frames"]),
            shape=(int(data["shape"][0]), int(data["shape"][1])),
            spacing_mm=float(data["spacing_mm"]),
            slice_thickness_mm=float(data["slice_thickness_mm"]),
            dicom_files=int(data["dicom_files"]),
            contour_files=int(data["contour_files"]),
            files_written=int(data["files_written"]),
            annotated_samples=int(data["annotated_samples"]),
            truth=[
                PatientTruth(**{**entry, **{key: tuple(entry[key]) for key in _TUPLE_FIELDS}})
                for entry in data["truth"]
            ],
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise DataError(f"malformed phantom summary ({exc.__class__.__name__}: {exc})", path) from None


def write_phantom(
    out: str | Path,
    *,
    patients: int = 4,
    seed: int = 0,
    slices: int = 8,
    frames: int = 20,
    shape: tuple[int, int] = (256, 216),
    spacing_mm: float = 0.70,
) -> PhantomSummary:
    """Write a synthetic short-axis cine study in the RVSC native layout (module docstring).

    Args:
        out: the folder to write; it must be new, empty, or a previous phantom (whose patient
            folders are removed first, so a smaller rerun leaves no stale patient behind).
        patients: number of patients, 1-99 (``patient01`` ...).
        seed: non-negative random seed; patient ``n`` depends only on ``(seed, n)``.
        slices: short-axis slices per patient, base to apex.
        frames: frames per slice over one cardiac cycle, at least 2 (ED and ES differ).
        shape: (H, W) of the images.
        spacing_mm: pixel spacing in mm (rows and columns).

    Returns:
        the :class:`PhantomSummary`, also written to ``out/phantom.json``.

    Raises:
        ConfigError: an option out of range, or an image too small to hold the heart.
        DataError: ``out`` is a file, or a non-empty folder that is not a previous phantom.
    """
    out = Path(out)
    shape = _check_options(patients, seed, slices, frames, shape, spacing_mm)
    study = _Study(seed=seed, slices=slices, frames=frames, shape=shape, spacing_mm=spacing_mm)
    # Every patient's geometry is drawn and checked before the first file is touched.
    phantom_patients = [_draw_patient(number, study) for number in range(1, patients + 1)]
    _prepare_output(out)
    write_text(
        out / PHANTOM_JSON,
        json.dumps({"generator": GENERATOR, "complete": False, "folders": _patient_folders(patients)}, indent=2),
    )
    truths, dicom_files, contour_files = [], 0, 0
    for patient in phantom_patients:
        truth, written_dicoms, written_contours = _write_patient(out, patient, study)
        truths.append(truth)
        dicom_files += written_dicoms
        contour_files += written_contours
    summary = PhantomSummary(
        out=out,
        seed=seed,
        patients=patients,
        slices=slices,
        frames=frames,
        shape=shape,
        spacing_mm=float(spacing_mm),
        slice_thickness_mm=SLICE_THICKNESS_MM,
        dicom_files=dicom_files,
        contour_files=contour_files,
        files_written=dicom_files + contour_files + patients + 1,  # + list files + phantom.json
        annotated_samples=sum(len(truth.annotated_slices) * 2 for truth in truths),
        truth=truths,
    )
    write_text(out / PHANTOM_JSON, json.dumps(summary.to_dict(), indent=2))
    return summary


def cardiac_contraction(frame: int, frames: int, es_frame: int) -> float:
    """How far the ventricles have contracted at ``frame``: 0 at ED (frame 0), 1 at ``es_frame``.

    Half-cosine ramps up to ES and back down toward the next ED, so cavities change smoothly.
    """
    if frame <= es_frame:
        return 0.5 - 0.5 * math.cos(math.pi * frame / es_frame)
    return 0.5 + 0.5 * math.cos(math.pi * (frame - es_frame) / (frames - es_frame))


# --------------------------------------------------------------------------------------------
# Options and the output folder


@dataclass(frozen=True)
class _Study:
    seed: int
    slices: int
    frames: int
    shape: tuple[int, int]
    spacing_mm: float


def _check_options(
    patients: int, seed: int, slices: int, frames: int, shape: tuple[int, int], spacing_mm: float
) -> tuple[int, int]:
    if not is_whole_number(patients) or not 1 <= patients <= 99:
        raise ConfigError(f"phantom patients must be an integer from 1 to 99, not {patients!r}")
    if not is_whole_number(seed) or seed < 0:
        raise ConfigError(f"phantom seed must be a non-negative integer, not {seed!r}")
    if not is_whole_number(slices) or slices < 1:
        raise ConfigError(f"phantom slices must be a positive integer, not {slices!r}")
    if not is_whole_number(frames) or frames < 2:
        raise ConfigError(f"phantom frames must be an integer of at least 2 (ED and ES), not {frames!r}")
    if np.ndim(shape) != 1 or len(shape) != 2 or not all(
            is_whole_number(size) and size >= 16 for size in shape):
        raise ConfigError(f"phantom shape must be two integers (rows, columns) of at least 16, not {shape!r}")
    if not is_finite_number(spacing_mm) or spacing_mm <= 0:
        raise ConfigError(f"phantom spacing_mm must be a positive number, not {spacing_mm!r}")
    if slices * frames > 9999:
        raise ConfigError(f"phantom slices x frames must fit the 4-digit file index, not {slices * frames}")
    return int(shape[0]), int(shape[1])


def _patient_folders(patients: int) -> list[str]:
    return [f"patient{number:02d}" for number in range(1, patients + 1)]


def _read_phantom_json(path: Path) -> dict | None:
    """The content of a ``phantom.json`` written by this module, or None."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("generator") != GENERATOR:
        return None
    return data


def _prepare_output(out: Path) -> None:
    """Make ``out`` ready: create it, or clear the patient folders of a previous phantom in it."""
    if out.exists() and not out.is_dir():
        raise DataError("phantom output exists and is not a folder", out)
    if not out.exists():
        out.mkdir(parents=True)
        return
    if not any(out.iterdir()):
        return
    previous = _read_phantom_json(out / PHANTOM_JSON)
    if previous is None:
        raise DataError(
            f"phantom output folder is not empty and holds no previous phantom ({PHANTOM_JSON}); "
            "choose a new or empty folder",
            out,
        )
    folders = previous.get("folders", [])
    for name in folders if isinstance(folders, list) else []:
        if isinstance(name, str) and _PATIENT_FOLDER.fullmatch(name) and (out / name).is_dir():
            shutil.rmtree(out / name)


# --------------------------------------------------------------------------------------------
# Random anatomy of one patient


@dataclass(frozen=True)
class _Heart:
    """One patient's heart, at the base slice and end-diastole; lengths in mm, angles in radians.

    Positions are (x, y) relative to the image centre, x along columns, y along rows (down).
    """

    centre: np.ndarray  # (2,)
    drift_per_slice: np.ndarray  # (2,) centre shift from one slice to the next toward the apex
    beat_shift: np.ndarray  # (2,) centre shift at full contraction
    lv_radius: float  # equivalent radius of the LV cavity
    lv_wall: float
    lv_aspect: float  # major / minor axis of the LV ellipses
    lv_axis: float  # direction of the major axis
    lv_ef: float  # fraction
    rv_angle: float  # direction of the middle of the RV crescent from the LV centre
    rv_half_span: float  # half the angle the crescent wraps around the LV
    rv_width: float  # largest cavity width
    rv_exponent: float  # bluntness of the crescent's tips
    rv_skew: float  # asymmetry of the crescent (-: thicker at the start, +: at the end)
    rv_ripple: float  # relative amplitude of a slow wave along the free wall
    rv_ripple_phase: float
    rv_wall: float
    rv_ef: float  # fraction, the target of each slice's ES/ED area ratio
    rv_on_apex: bool  # whether the most apical slice still cuts the RV


@dataclass(frozen=True)
class _Look:
    """One patient's intensities (arbitrary scanner units), noise and heart rate."""

    blood: float
    myocardium: float
    tissue: float
    fat: float
    lung: float
    bone: float
    noise_sigma: float
    heart_rate_bpm: float


@dataclass(frozen=True)
class _Body:
    """One patient's thorax around the heart; (x, y) mm relative to the image centre."""

    centre: tuple[float, float]
    axes: tuple[float, float]
    fat_thickness: float  # subcutaneous fat, bright in cine SSFP
    lungs: tuple[tuple[tuple[float, float], tuple[float, float]], ...]  # (centre, semi-axes) each
    mediastinum_margin: float  # tissue kept between the heart and the lungs
    spine: tuple[float, float]
    aorta: tuple[float, float]


@dataclass
class _FrameShapes:
    """Polygons of one frame, (N, 2) ``(x, y)`` pixel coordinates; RV ones are None when absent."""

    lv_endo: np.ndarray
    lv_epi: np.ndarray
    papillary: list[np.ndarray]
    rv_endo: np.ndarray | None
    rv_epi: np.ndarray | None


@dataclass
class _Patient:
    number: int
    heart: _Heart
    body: _Body
    look: _Look
    es_frame: int
    orientation: np.ndarray  # (6,) ImageOrientationPatient: row direction, column direction
    base_location_mm: float  # SliceLocation of slice 0
    shapes: list[list[_FrameShapes]]  # [slice][frame]
    rng: np.random.Generator  # continues after the geometry, for textures and noise

    @property
    def id(self) -> str:
        return f"P{self.number:02d}"


def _draw_patient(number: int, study: _Study) -> _Patient:
    """Draw patient ``number``'s anatomy and every frame's polygons, from ``(seed, number)`` only."""
    rng = np.random.default_rng([study.seed, number])
    heart = _draw_heart(rng, study.slices)
    body = _draw_body(rng)
    look = _Look(
        blood=rng.uniform(850, 1100),
        myocardium=rng.uniform(180, 260),
        tissue=rng.uniform(380, 480),
        fat=rng.uniform(650, 850),
        lung=rng.uniform(20, 50),
        bone=rng.uniform(280, 360),
        noise_sigma=rng.uniform(12, 24),
        heart_rate_bpm=round(rng.uniform(58, 82), 1),
    )
    es_frame = min(max(round(study.frames * rng.uniform(0.35, 0.45)), 1), study.frames - 1)
    orientation = _short_axis_orientation(rng)
    base_location_mm = round(float(rng.uniform(-10.0, 30.0)), 2)
    shapes = [_slice_shapes(heart, index, study, es_frame) for index in range(study.slices)]
    patient = _Patient(number, heart, body, look, es_frame, orientation, base_location_mm, shapes, rng)
    _check_heart_fits(patient, study)
    return patient


def _draw_heart(rng: np.random.Generator, slices: int) -> _Heart:
    scale = rng.uniform(0.85, 1.15)
    rotation = rng.uniform(-0.35, 0.35)
    rv_angle = math.radians(205.0) + rotation + rng.uniform(-0.2, 0.2)
    rv_width = scale * rng.uniform(20.0, 27.0)
    rv_wall = rng.uniform(2.0, 3.0)
    # Shift the LV away from the RV so the whole heart, not the LV, sits near the image centre.
    rv_direction = np.array([math.cos(rv_angle), math.sin(rv_angle)])
    centre = rng.uniform(-8.0, 8.0, size=2) + np.array([0.0, -6.0]) - 0.4 * (rv_width + rv_wall) * rv_direction
    drift_angle = rng.uniform(0, 2 * math.pi)
    beat_angle = rng.uniform(0, 2 * math.pi)
    return _Heart(
        centre=centre,
        drift_per_slice=rng.uniform(0.3, 1.0) * np.array([math.cos(drift_angle), math.sin(drift_angle)]),
        beat_shift=rng.uniform(0.5, 2.0) * np.array([math.cos(beat_angle), math.sin(beat_angle)]),
        lv_radius=scale * rng.uniform(22.0, 26.0),
        lv_wall=rng.uniform(7.0, 10.0),
        lv_aspect=rng.uniform(1.0, 1.15),
        lv_axis=rotation + rng.uniform(0, math.pi),
        lv_ef=rng.uniform(0.5, 0.65),
        rv_angle=rv_angle,
        rv_half_span=math.radians(rng.uniform(70.0, 88.0)),
        rv_width=rv_width,
        rv_exponent=rng.uniform(0.45, 0.65),
        rv_skew=rng.uniform(-0.3, 0.3),
        rv_ripple=rng.uniform(0.0, 0.12),
        rv_ripple_phase=rng.uniform(0, 2 * math.pi),
        rv_wall=rv_wall,
        rv_ef=rng.uniform(0.45, 0.60),
        rv_on_apex=slices < 3 or bool(rng.uniform() < 0.5),
    )


# --------------------------------------------------------------------------------------------
# Geometry: polygons in mm around the LV centre, then in pixels


def _slice_position(index: int, slices: int) -> float:
    """0 at the base slice, 1 at the most apical one."""
    return index / (slices - 1) if slices > 1 else 0.0


def _lv_radii(heart: _Heart, position: float, contraction: float) -> tuple[float, float]:
    """Equivalent radii (mm) of the LV cavity and epicardium; the myocardial area is conserved."""
    cavity_ed = heart.lv_radius * (1.0 - 0.45 * position**2)
    cavity = cavity_ed * math.sqrt(1.0 - contraction * heart.lv_ef)
    myocardium_area = (cavity_ed + heart.lv_wall) ** 2 - cavity_ed**2
    return cavity, math.sqrt(cavity**2 + myocardium_area)


def _ellipse_radius(heart: _Heart, radius: float, angles: np.ndarray) -> np.ndarray:
    """Polar radius, around its centre, of an LV ellipse of equivalent radius ``radius``."""
    major, minor = radius * math.sqrt(heart.lv_aspect), radius / math.sqrt(heart.lv_aspect)
    relative = angles - heart.lv_axis
    return major * minor / np.sqrt((minor * np.cos(relative)) ** 2 + (major * np.sin(relative)) ** 2)


def _polar(angles: np.ndarray, radii: np.ndarray) -> np.ndarray:
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _rv_span_and_width(
    heart: _Heart, position: float, contraction: float, es_width_ratio: float
) -> tuple[float, float]:
    """Half the angle the RV crescent wraps (radians) and its largest cavity width (mm)."""
    half_span = heart.rv_half_span * (1.0 - 0.25 * position) * (1.0 - 0.1 * contraction)
    width = heart.rv_width * (1.0 - 0.55 * position) * (1.0 - contraction * (1.0 - es_width_ratio))
    return half_span, width


#: Gap (mm) between the septum and the RV cavity's septal edge; far below a pixel.
_SEPTAL_GAP_MM = 0.1


def _rv_crescents(heart: _Heart, septum_radius: float, half_span: float, width: float) -> tuple[np.ndarray, np.ndarray]:
    """Dense RV cavity and epicardium outlines, (N, 2) mm around the LV centre.

    The cavity lies between the LV epicardium (the septum) and a free wall whose width tapers to
    blunt tips; the epicardium adds ``rv_wall`` radially and caps the tips with quarter ellipses.
    """
    u = np.linspace(-1.0, 1.0, _DENSE_ARC_SAMPLES)
    angles = heart.rv_angle + u * half_span
    cavity_width = (
        width
        * (1.0 - u**2) ** heart.rv_exponent
        * (1.0 + heart.rv_skew * u)
        * (1.0 + heart.rv_ripple * np.sin(2.5 * math.pi * u + heart.rv_ripple_phase))
    )
    septum = _ellipse_radius(heart, septum_radius, angles)
    # The cavity's septal edge sits a hair outside the septum, so that the resampled endo and epi
    # polygons (different vertices along the same curve) never let an endo pixel poke out of epi.
    inner = septum + np.minimum(_SEPTAL_GAP_MM, 0.5 * cavity_width)
    endo = np.concatenate([_polar(angles, septum + cavity_width), _polar(angles[-2:0:-1], inner[-2:0:-1])])

    wall = heart.rv_wall
    cap_span = 1.5 * wall / septum_radius
    cap = np.linspace(0.0, 1.0, _DENSE_ARC_SAMPLES // 8)[1:]
    cap_width = wall * np.sqrt(1.0 - cap**2)
    epi_angles = np.concatenate([(angles[0] - cap * cap_span)[::-1], angles, angles[-1] + cap * cap_span])
    epi_width = np.concatenate([cap_width[::-1], cavity_width + wall, cap_width])
    epi_septum = _ellipse_radius(heart, septum_radius, epi_angles)
    epi = np.concatenate(
        [_polar(epi_angles, epi_septum + epi_width), _polar(epi_angles[-2:0:-1], epi_septum[-2:0:-1])]
    )
    return endo, epi


def _rv_cavity_area_mm2(heart: _Heart, position: float, contraction: float, es_width_ratio: float) -> float:
    _, septum_radius = _lv_radii(heart, position, contraction)
    half_span, width = _rv_span_and_width(heart, position, contraction, es_width_ratio)
    return polygon_area(_rv_crescents(heart, septum_radius, half_span, width)[0])


def _es_width_ratio(heart: _Heart, position: float) -> float:
    """Ratio of ES to ED crescent width that gives the slice an ES/ED area of ``1 - rv_ef``.

    The area grows monotonically with the width, so a bisection finds it.
    """
    target = (1.0 - heart.rv_ef) * _rv_cavity_area_mm2(heart, position, 0.0, 1.0)
    low, high = 0.0, 1.0
    for _ in range(_BISECTION_STEPS):
        middle = 0.5 * (low + high)
        if _rv_cavity_area_mm2(heart, position, 1.0, middle) < target:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def _slice_shapes(heart: _Heart, index: int, study: _Study, es_frame: int) -> list[_FrameShapes]:
    position = _slice_position(index, study.slices)
    has_rv = heart.rv_on_apex or index < study.slices - 1
    es_width_ratio = _es_width_ratio(heart, position) if has_rv else 1.0
    shapes = []
    for frame in range(study.frames):
        contraction = cardiac_contraction(frame, study.frames, es_frame)
        centre = heart.centre + index * heart.drift_per_slice + contraction * heart.beat_shift
        cavity_radius, epi_radius = _lv_radii(heart, position, contraction)
        circle = np.linspace(0.0, 2 * math.pi, _LV_SAMPLES, endpoint=False)
        lv_endo = _polar(circle, _ellipse_radius(heart, cavity_radius, circle))
        lv_epi = _polar(circle, _ellipse_radius(heart, epi_radius, circle))
        papillary = _papillary_muscles(heart, cavity_radius)
        rv_endo = rv_epi = None
        if has_rv:
            half_span, width = _rv_span_and_width(heart, position, contraction, es_width_ratio)
            endo, epi = _rv_crescents(heart, epi_radius, half_span, width)
            rv_endo, rv_epi = _contour_polygon(endo + centre, study), _contour_polygon(epi + centre, study)
        shapes.append(
            _FrameShapes(
                lv_endo=_mm_to_pixels(lv_endo + centre, study),
                lv_epi=_mm_to_pixels(lv_epi + centre, study),
                papillary=[_mm_to_pixels(muscle + centre, study) for muscle in papillary],
                rv_endo=rv_endo,
                rv_epi=rv_epi,
            )
        )
    return shapes


def _papillary_muscles(heart: _Heart, cavity_radius: float) -> list[np.ndarray]:
    """Two small dark discs inside the LV cavity, opposite the RV; none once the cavity is small."""
    if cavity_radius < 12.0:
        return []
    circle = np.linspace(0.0, 2 * math.pi, _PAPILLARY_SAMPLES, endpoint=False)
    radius = 0.11 * cavity_radius
    muscles = []
    for offset in (math.radians(135.0), math.radians(225.0)):
        angle = heart.rv_angle + offset
        centre = 0.6 * cavity_radius * np.array([math.cos(angle), math.sin(angle)])
        muscles.append(_polar(circle, np.full_like(circle, radius)) + centre)
    return muscles


def _mm_to_pixels(xy_mm: np.ndarray, study: _Study) -> np.ndarray:
    """(x, y) mm relative to the image centre -> (x, y) pixel coordinates (pixel centres at integers)."""
    rows, cols = study.shape
    centre = np.array([(cols - 1) / 2.0, (rows - 1) / 2.0])
    return centre + xy_mm / study.spacing_mm


def _contour_polygon(dense_mm: np.ndarray, study: _Study) -> np.ndarray:
    """A dense outline in mm -> the contour written: evenly spaced in pixels, 6 decimals."""
    dense = _mm_to_pixels(dense_mm, study)
    closed = np.vstack([dense, dense[:1]])
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(closed, axis=0).T))])
    # About one point per pixel of outline, as in manual RVSC contours.
    count = int(np.clip(round(arc[-1]), *CONTOUR_POINTS))
    targets = np.linspace(0.0, arc[-1], count, endpoint=False)
    points = np.stack([np.interp(targets, arc, closed[:, 0]), np.interp(targets, arc, closed[:, 1])], axis=1)
    # Rounded values are what the file holds, so drawing with them makes files and pixels agree.
    return np.round(points, _CONTOUR_DECIMALS)


def _check_heart_fits(patient: _Patient, study: _Study) -> None:
    """Raise :class:`ConfigError` when a heart outline comes within ``IMAGE_MARGIN_PX`` of the edge."""
    rows, cols = study.shape
    lowest = np.array([IMAGE_MARGIN_PX, IMAGE_MARGIN_PX])
    highest = np.array([cols - 1 - IMAGE_MARGIN_PX, rows - 1 - IMAGE_MARGIN_PX])  # (x, y)
    for frames in patient.shapes:
        for shapes in frames:
            outline = np.vstack([shapes.lv_epi] + ([shapes.rv_epi] if shapes.rv_epi is not None else []))
            if (outline.min(axis=0) < lowest).any() or (outline.max(axis=0) > highest).any():
                raise ConfigError(
                    f"phantom images of {rows} x {cols} pixels at {study.spacing_mm} mm cannot hold the heart of "
                    f"patient {patient.id} ({rows * study.spacing_mm:.0f} x {cols * study.spacing_mm:.0f} mm field "
                    "of view); use a larger shape or a larger spacing"
                )


# --------------------------------------------------------------------------------------------
# Drawing


def _mm_grid(study: _Study) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) in mm of every pixel centre relative to the image centre, each float32 (H, W)."""
    rows, cols = study.shape
    y = (np.arange(rows, dtype=np.float32) - (rows - 1) / 2.0) * study.spacing_mm
    x = (np.arange(cols, dtype=np.float32) - (cols - 1) / 2.0) * study.spacing_mm
    return np.meshgrid(x, y)


def _inside_ellipse(x: np.ndarray, y: np.ndarray, centre: tuple[float, float], axes: tuple[float, float]) -> np.ndarray:
    return ((x - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2 <= 1.0


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Smooth random float32 (H, W) field with zero mean and unit standard deviation."""
    smooth = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_px, mode="reflect")
    return (smooth - smooth.mean()) / max(float(smooth.std()), 1e-6)


def _draw_body(rng: np.random.Generator) -> _Body:
    body_axes = (rng.uniform(150, 170), rng.uniform(110, 125))
    body_centre = (rng.uniform(-5, 5), rng.uniform(10, 25))
    spine = (rng.uniform(-6, 6), body_centre[1] + body_axes[1] - rng.uniform(40, 50))
    return _Body(
        centre=body_centre,
        axes=body_axes,
        fat_thickness=rng.uniform(8, 16),
        lungs=tuple(
            ((side * rng.uniform(65, 80), rng.uniform(0, 20)), (rng.uniform(42, 52), rng.uniform(70, 85)))
            for side in (-1.0, 1.0)
        ),
        mediastinum_margin=rng.uniform(6, 12),
        spine=spine,
        aorta=(spine[0] + rng.uniform(18, 26), spine[1] - rng.uniform(16, 22)),
    )


def _background(patient: _Patient, index: int, study: _Study) -> np.ndarray:
    """Float32 (H, W) image of everything but the heart, for one slice of one patient."""
    look, heart, body = patient.look, patient.heart, patient.body
    x, y = _mm_grid(study)
    image = np.zeros(study.shape, dtype=np.float32)
    image[_inside_ellipse(x, y, body.centre, body.axes)] = look.fat
    inner_axes = (body.axes[0] - body.fat_thickness, body.axes[1] - body.fat_thickness)
    image[_inside_ellipse(x, y, body.centre, inner_axes)] = look.tissue

    # The lungs keep a layer of mediastinal tissue around the heart of this slice.
    heart_centre = heart.centre + index * heart.drift_per_slice
    heart_reach = heart.lv_radius + heart.lv_wall + heart.rv_width + heart.rv_wall + body.mediastinum_margin
    mediastinum = (x - heart_centre[0]) ** 2 + (y - heart_centre[1]) ** 2 <= heart_reach**2
    for lung_centre, lung_axes in body.lungs:
        image[_inside_ellipse(x, y, lung_centre, lung_axes) & ~mediastinum] = look.lung

    image[_inside_ellipse(x, y, body.spine, (17.0, 15.0))] = look.bone
    image[_inside_ellipse(x, y, (body.spine[0], body.spine[1] + 20.0), (7.0, 7.0))] = look.lung
    image[_inside_ellipse(x, y, body.aorta, (11.0, 11.0))] = look.blood
    return image


def _bias_field(rng: np.random.Generator, study: _Study) -> np.ndarray:
    """Smooth multiplicative float32 (H, W) field around 1 (coil sensitivity), within about +-30 %."""
    x, y = _mm_grid(study)
    half = max(study.shape) * study.spacing_mm / 2.0
    u, v = x / half, y / half
    terms = np.stack([u, v, u * v, u**2 - 0.5, v**2 - 0.5])
    coefficients = rng.uniform(-1.0, 1.0, size=5).astype(np.float32)
    exponent = np.tensordot(coefficients, terms, axes=1)
    return np.exp(0.25 * exponent / max(float(np.abs(exponent).max()), 1e-6)).astype(np.float32)


def _draw_frame(
    background: np.ndarray, shapes: _FrameShapes, look: _Look, texture_and_bias: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One uint16 (H, W) frame: the heart painted over the background, then bias and Rician noise.

    The RV cavity is painted last but for the LV cavity (which never touches it), so the bright RV
    pixels are exactly the mask of ``shapes.rv_endo``.
    """
    image = background.copy()
    shape = image.shape
    # The LV myocardium is drawn half a pixel wider so that no background shows between it and
    # the RV, whose septal edge follows the LV epicardium with different vertices.
    lv_epi = _widen(shapes.lv_epi, 0.5)
    image[polygon_to_mask(lv_epi, shape)] = look.myocardium
    if shapes.rv_epi is not None:
        image[polygon_to_mask(shapes.rv_epi, shape)] = look.myocardium
        image[polygon_to_mask(shapes.rv_endo, shape)] = look.blood
    image[polygon_to_mask(shapes.lv_endo, shape)] = look.blood
    for muscle in shapes.papillary:
        image[polygon_to_mask(muscle, shape)] = look.myocardium
    image *= texture_and_bias
    real = image + look.noise_sigma * rng.standard_normal(shape, dtype=np.float32)
    imaginary = look.noise_sigma * rng.standard_normal(shape, dtype=np.float32)
    magnitude = np.sqrt(real * real + imaginary * imaginary)
    return np.clip(np.rint(magnitude), 0, np.iinfo(np.uint16).max).astype(np.uint16)


def _widen(polygon: np.ndarray, pixels: float) -> np.ndarray:
    """A star-shaped polygon pushed ``pixels`` outward from its centroid."""
    centre = polygon.mean(axis=0)
    offset = polygon - centre
    length = np.hypot(offset[:, 0], offset[:, 1])[:, None]
    return centre + offset * (1.0 + pixels / np.maximum(length, 1e-6))


# --------------------------------------------------------------------------------------------
# Writing one patient


def _write_patient(out: Path, patient: _Patient, study: _Study) -> tuple[PatientTruth, int, int]:
    """Write a patient's DICOMs, contours and list file; returns (truth, DICOM count, contour count)."""
    folder = out / f"patient{patient.number:02d}"
    (folder / f"{patient.id}dicom").mkdir(parents=True)
    (folder / f"{patient.id}contours-manual").mkdir()
    template = _dicom_template(patient, study)
    listed: list[str] = []
    annotated, ed_areas, es_areas = [], [], []
    for index in range(study.slices):
        contour_files, areas = _write_slice(folder, patient, index, template, study)
        listed += [f".\\{folder.name}\\{path.parent.name}\\{path.name}" for path in contour_files]
        if areas is not None:
            annotated.append(index)
            ed_areas.append(areas[0])
            es_areas.append(areas[1])
    write_text(folder / f"{patient.id}list.txt", "".join(f"{line}\r\n" for line in listed))
    voxel_ml = study.spacing_mm**2 * SLICE_THICKNESS_MM / 1000.0
    # The base slice always cuts the RV, so the ED volume is never zero.
    ed_volume, es_volume = sum(ed_areas) * voxel_ml, sum(es_areas) * voxel_ml
    truth = PatientTruth(
        patient=patient.id,
        es_frame=patient.es_frame,
        heart_rate_bpm=patient.look.heart_rate_bpm,
        annotated_slices=tuple(annotated),
        ed_areas_px=tuple(ed_areas),
        es_areas_px=tuple(es_areas),
        ed_volume_ml=ed_volume,
        es_volume_ml=es_volume,
        ef_percent=100.0 * (ed_volume - es_volume) / ed_volume,
    )
    return truth, study.slices * study.frames, len(listed)


def _write_slice(
    folder: Path, patient: _Patient, index: int, template: Dataset, study: _Study
) -> tuple[list[Path], tuple[int, int] | None]:
    """Write every frame of one slice and its ED/ES contours.

    Returns:
        the contour files written (ED then ES, i before o), and the RV cavity pixel counts
        (ED, ES), or None when the slice does not cut the RV.
    """
    background = _background(patient, index, study)
    texture = 1.0 + 0.06 * _smooth_field(patient.rng, study.shape, sigma_px=6.0)
    texture_and_bias = texture * _bias_field(patient.rng, study)
    rr_ms = 60000.0 / patient.look.heart_rate_bpm
    contour_files: list[Path] = []
    areas: list[int] = []
    for frame, shapes in enumerate(patient.shapes[index]):
        file_index = index * study.frames + frame
        stem = f"{patient.id}-{file_index:04d}"
        pixels = _draw_frame(background, shapes, patient.look, texture_and_bias, patient.rng)
        _write_dicom(
            folder / f"{patient.id}dicom" / f"{stem}.dcm",
            template,
            pixels,
            file_index=file_index,
            trigger_time_ms=frame * rr_ms / study.frames,
            slice_location=patient.base_location_mm + index * SLICE_THICKNESS_MM,
            orientation=patient.orientation,
            study=study,
        )
        if shapes.rv_endo is None or frame not in (0, patient.es_frame):
            continue
        for kind, polygon in (("i", shapes.rv_endo), ("o", shapes.rv_epi)):
            path = folder / f"{patient.id}contours-manual" / f"{stem}-{kind}contour-manual.txt"
            write_contour_file(path, polygon)
            contour_files.append(path)
        areas.append(int(polygon_to_mask(shapes.rv_endo, study.shape).sum()))
    return contour_files, (areas[0], areas[1]) if areas else None


def _short_axis_orientation(rng: np.random.Generator) -> np.ndarray:
    """An oblique short-axis ImageOrientationPatient (6,), near that of the RVSC files."""
    row = np.array([0.50, 0.84, -0.23]) + rng.uniform(-0.05, 0.05, size=3)
    row /= np.linalg.norm(row)
    column = np.array([-0.47, 0.04, -0.88])
    column -= np.dot(column, row) * row
    column /= np.linalg.norm(column)
    return np.concatenate([row, column])


def _ds(value: float) -> str:
    """A decimal string short enough for a DICOM DS value (16 characters)."""
    return f"{value:.10g}"


def _uid(*parts: object) -> str:
    """A UID that depends only on ``parts``, so the same seed writes the same bytes."""
    return generate_uid(entropy_srcs=["rvseg-phantom", *map(str, parts)])


def _dicom_template(patient: _Patient, study: _Study) -> Dataset:
    """The tags shared by every frame of a patient; :func:`_write_dicom` fills in the rest."""
    rows, cols = study.shape
    rr_ms = 60000.0 / patient.look.heart_rate_bpm
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY", "SYNTHETIC"]
    ds.SOPClassUID = MRImageStorage
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20000101"
    ds.Modality = "MR"
    ds.Manufacturer = "rvseg"
    ds.StudyDescription = "rvseg synthetic phantom"
    ds.SeriesDescription = "rvseg synthetic phantom - short-axis cine (not patient data)"
    ds.PatientName = f"PHANTOM^{patient.id}"
    ds.PatientID = f"PHANTOM-S{study.seed}-{patient.id}"
    ds.MRAcquisitionType = "2D"
    ds.SliceThickness = _ds(SLICE_THICKNESS_MM)
    ds.SpacingBetweenSlices = _ds(SLICE_THICKNESS_MM)
    ds.NominalInterval = str(round(rr_ms))
    ds.HeartRate = str(round(patient.look.heart_rate_bpm))
    ds.CardiacNumberOfImages = str(study.frames)
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = _uid(study.seed, patient.number, "study")
    ds.SeriesInstanceUID = _uid(study.seed, patient.number, "series")
    ds.FrameOfReferenceUID = _uid(study.seed, patient.number, "frame-of-reference")
    ds.StudyID = ""
    ds.SeriesNumber = "1"
    ds.ImageComments = _SYNTHETIC_NOTE
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = [_ds(study.spacing_mm), _ds(study.spacing_mm)]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.WindowCenter = _ds(round(patient.look.blood * 0.5))
    ds.WindowWidth = _ds(round(patient.look.blood * 1.2))
    return ds


def _write_dicom(
    path: Path,
    ds: Dataset,
    pixels: np.ndarray,
    *,
    file_index: int,
    trigger_time_ms: float,
    slice_location: float,
    orientation: np.ndarray,
    study: _Study,
) -> None:
    """Fill the per-frame tags of the patient's template ``ds`` and save it to ``path``."""
    rows, cols = study.shape
    row_direction, column_direction = orientation[:3], orientation[3:]
    normal = np.cross(row_direction, column_direction)
    # The slice centre lies on the normal at ``slice_location``; the position is the first pixel.
    centre = slice_location * normal
    position = centre - study.spacing_mm * ((cols - 1) / 2.0 * row_direction + (rows - 1) / 2.0 * column_direction)
    sop_uid = _uid(ds.SeriesInstanceUID, file_index)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = str(file_index + 1)
    ds.TriggerTime = _ds(round(trigger_time_ms, 3))
    ds.SliceLocation = _ds(slice_location)
    ds.ImagePositionPatient = [_ds(round(float(value), 6)) for value in position]
    ds.ImageOrientationPatient = [_ds(round(float(value), 8)) for value in orientation]
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)

"""RV areas per slice, volumes by summation of discs, and the ejection fraction.

**Volume of one phase** (summation of discs, Simpson's rule as used for cine MRI):
``V = sum over the slices of the stack of (RV cavity area on the slice, mm^2) x (slice spacing, mm)``,
divided by 1000 to give mL. The cavity is the first of :data:`CAVITY_LABELS` a model segments: ``endo``
(the RVSC i-contour, or the left ventricle's on Sunnybrook data: :func:`chamber`) or ACDC's ``rv``.

**Slice spacing** is the distance between the centres of neighbouring slices, measured on the sorted
distinct slice locations of the stack (rounded to 0.01 mm; :func:`slice_spacing_mm`). It is *not* the
slice thickness: each slice's area stands for the slab of heart between it and its neighbours, and
when slices have a gap the slab is wider than the slice. RVSC patient 9, for example, has 7 mm thick
slices whose locations are 8.4 mm apart; multiplying by the thickness would leave out the 1.4 mm
gaps, 17% of the volume. A missing slice in a stack counts as missing (its slab is not filled in,
and a note says so) instead of stretching the spacing of every slice. Neighbours off the stack's grid
(an extra slice between two others, a shifted slice, an uneven step) split the distance between them
halfway (:func:`slab_thicknesses`), so that no part of the heart is counted twice or left out; on a
regular grid every slab is the spacing. Two images of one phase on one slice (a repeated
acquisition) count once, by their mean area. A volume therefore needs at least two slice locations; a
stack with fewer gets areas only.

**Phases**, when the source does not give them (a new cine study):

- Frames are put in cycle order by trigger time (frame number breaking ties and standing in for a
  missing trigger time).
- When every slice has the same number of frames (a cine whose k-th frames belong to the same instant
  of the cycle on every slice), ED is the frame index k with the largest total volume of the stack and
  ES the one with the smallest: one instant each for the whole heart, as in clinical practice, and
  robust to a single slice whose predicted area peaks or dips at the wrong frame. The largest volume,
  not the first frame, because a cine need not start at the R wave (Sunnybrook's contoured frames, a
  prospectively triggered series that starts late, an export of a few frames).
- When some slices lack frames but more than half hold the whole cine and every frame has a trigger
  time, ED and ES are chosen the same way over the complete slices, and on each other slice the frame
  nearest in trigger time to those instants (within half the time between instants) takes the phase;
  a note names those slices, and one lacking a frame near ED or ES leaves that phase's volume (with a
  note) rather than borrowing another instant.
- Otherwise ED and ES are, on each slice, its frames of largest and smallest area (no ES on a slice
  with a single frame); a note says they may be different instants on different slices.

When the source gives phases (a prepared data set records ED/ES per sample), they are kept as given.
EDV and ESV are summed over the slices carrying that phase; the ejection fraction
``EF = 100 (EDV - ESV) / EDV`` is reported only when the same slices carry both phases, since an
EF over different slice sets would mix anatomy with function.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from operator import attrgetter

import numpy as np

from rvseg.data.dicom import LOCATION_DECIMALS

#: The quantities compared by :func:`volume_errors`.
VOLUME_KEYS = ("ed_volume_ml", "es_volume_ml", "ef_percent")
#: Labels of the cavity whose area makes the volume: ``endo`` (RVSC i-contour), ``rv`` (ACDC).
CAVITY_LABELS = ("endo", "rv")
#: Data formats whose ``endo`` contours are the left ventricle's (Sunnybrook); all others are the RV's.
LEFT_VENTRICLE_FORMATS = ("sunnybrook",)


def cavity_label(labels: Sequence[str]) -> str | None:
    """The first of :data:`CAVITY_LABELS` among ``labels``, or None."""
    return next((name for name in CAVITY_LABELS if name in labels), None)


def no_cavity_note() -> str:
    return f"no volumes: the model segments none of {', '.join(CAVITY_LABELS)} (the ventricular cavity)"


def chamber(data_format: str | None) -> str:
    """``LV`` for a data format whose cavity contours are the left ventricle's (Sunnybrook), else ``RV``."""
    return "LV" if data_format in LEFT_VENTRICLE_FORMATS else "RV"


@dataclass(frozen=True)
class SliceArea:
    """The RV cavity area on one image of a cine stack.

    Attributes:
        stack: the patient or series the image belongs to (volumes are computed per stack).
        id: the image id.
        slice_location: position of the slice along its normal in mm.
        area_mm2: cavity area in mm^2.
        trigger_time: ms after the R wave, or None.
        frame: frame number (orders frames when trigger times are missing), or None.
        phase: ``"ED"``, ``"ES"`` or ``""`` (neither, or not known yet).
        thickness_mm: the slice's thickness (SpacingBetweenSlices, else SliceThickness), or None: tells
            a grid step from an extra slice between two others (:func:`slice_spacing_mm`).
    """

    stack: str
    id: str
    slice_location: float
    area_mm2: float
    trigger_time: float | None = None
    frame: int | None = None
    phase: str = ""
    thickness_mm: float | None = None

    @property
    def slice_key(self) -> float:
        return round(self.slice_location, LOCATION_DECIMALS)


@dataclass
class StackVolumes:
    """Volumes of one stack.

    Attributes:
        stack: the patient or series.
        slice_spacing_mm: distance between slice centres (module docstring).
        n_slices: distinct slice locations of the stack.
        ed_slices: slices carrying an ED image; ``es_slices`` likewise.
        ed_volume_ml: RV end-diastolic volume, or None without ED images; ``es_volume_ml`` likewise.
        ef_percent: ejection fraction, or None (no ED or ES volume, or different slice sets).
        stroke_volume_ml: EDV - ESV, or None where ``ef_percent`` is.
        es_rule: how ES was chosen: ``given``, ``min-total-volume`` or ``min-area-per-slice``.
        notes: anything the reader of the numbers should know.
    """

    stack: str
    slice_spacing_mm: float
    n_slices: int
    ed_slices: int
    es_slices: int
    ed_volume_ml: float | None
    es_volume_ml: float | None
    ef_percent: float | None
    es_rule: str
    notes: list[str] = field(default_factory=list)
    stroke_volume_ml: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def area_mm2(mask: np.ndarray, spacing_mm: tuple[float, float]) -> float:
    """Area of a bool (H, W) mask in mm^2, given the (row, column) pixel spacing in mm."""
    return float(np.count_nonzero(mask)) * float(spacing_mm[0]) * float(spacing_mm[1])


def partly_positioned(stacks: Sequence[str], plane_positions: Sequence[float | None]) -> dict[str, tuple[int, int]]:
    """Stacks some but not all of whose images have a plane position (measured along the slice normal):
    stack -> (images with one, images). All images of such a stack are placed by their slice locations
    instead, so that no stack is measured in two units (GE scanners measure SliceLocation along the table
    axis: 6.7 mm apart for Sunnybrook's short-axis slices 10 mm apart)."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for stack, position in zip(stacks, plane_positions, strict=True):
        counts[stack][0] += position is not None
        counts[stack][1] += 1
    return {stack: (with_position, total) for stack, (with_position, total) in counts.items()
            if 0 < with_position < total}


def partly_positioned_notes(partial: Mapping[str, tuple[int, int]]) -> list[str]:
    return [f"{stack}: {total - with_position} of {total} images have no plane position, so its slices are placed "
            "by their slice locations" for stack, (with_position, total) in partial.items()]


def slice_spacing_mm(locations: Sequence[float], thickness_mm: float | None = None) -> float | None:
    """Distance between neighbouring slice centres (mm) of a stack whose slice locations may have gaps;
    None for fewer than two distinct locations.

    The spacing is the largest distance between neighbours of which every other such distance is a
    whole multiple (within 10 %), refined as the median of the distances divided by their multiples:
    0, 10 and 30 mm are 10 mm apart with a slice missing (a plain median would say 15). A step below
    0.95 of the slices' ``thickness_mm`` is no grid step but an extra slice between two others, so with
    6 mm slices 0, 10, 15 and 20 mm stay a 10 mm stack; without a thickness, a grid must not have more
    missing slices than present ones (so that 0, 7.5 and 30 mm stay a 7.5 mm stack missing two, at the
    price of taking 0, 10, 20, 30, 40 and 45 mm for a 5 mm one missing four). Where no grid fits, the
    median of the distances is used.
    """
    distinct = distinct_locations(locations)
    if len(distinct) < 2:
        return None
    distances = np.diff(distinct)
    for unit in sorted(distances, reverse=True):
        if thickness_mm and unit < 0.95 * thickness_mm:
            break
        multiples, on_grid = grid_steps(distances, unit)
        if on_grid.all() and (thickness_mm or multiples.sum() + 1 <= 2 * len(distinct)):
            return float(np.median(distances / multiples))
    return float(np.median(distances))


def grid_steps(distances: np.ndarray, unit: float) -> tuple[np.ndarray, np.ndarray]:
    """How many steps of ``unit`` each distance between neighbouring slices spans (at least 1), and
    whether it is that whole number of steps, within 10 % of a step per step."""
    multiples = np.maximum(np.round(distances / unit), 1.0)
    return multiples, np.abs(distances - multiples * unit) <= 0.1 * unit * multiples


def distinct_locations(locations: Sequence[float]) -> np.ndarray:
    """The sorted distinct slice locations, rounded to 0.01 mm (float64 (K,))."""
    return np.unique(np.round(np.asarray(locations, dtype=np.float64), LOCATION_DECIMALS))


def slab_thicknesses(
    slice_keys: Sequence[float], spacing: float
) -> tuple[dict[float, float], list[tuple[float, float]]]:
    """The thickness (mm) of the slab of heart each distinct slice stands for, and the neighbours off the grid.

    Half of a slab lies towards each neighbour: half the spacing where the neighbour is a whole number of
    steps away (on the stack's grid; a missing slice's slab is left out, as the module docstring says)
    or where one or more slices are missing, else half the distance to it: the slabs of neighbours off
    the grid (an extra slice between two others, a shifted slice, uneven steps) meet halfway. An end
    slice's outer half is half the spacing. On a regular grid every slab is the spacing.

    Args:
        slice_keys: the slice locations of a stack, or of one phase's images, rounded as
            :attr:`SliceArea.slice_key` rounds them.
        spacing: the stack's :func:`slice_spacing_mm`.

    Returns:
        (slice key -> slab thickness in mm, the (lower, upper) keys of the neighbours whose slabs meet
        halfway: less than one and a half steps apart, and no whole number of steps).
    """
    distinct = np.unique(np.asarray(slice_keys, dtype=np.float64))
    distances = np.diff(distinct)
    multiples, on_grid = grid_steps(distances, spacing)
    meeting = ~on_grid & (multiples == 1)
    halves = np.concatenate([[spacing], np.where(meeting, distances, spacing), [spacing]]) / 2
    slabs = dict(zip(distinct.tolist(), (halves[:-1] + halves[1:]).tolist(), strict=True))
    return slabs, [(float(distinct[k]), float(distinct[k + 1])) for k in np.flatnonzero(meeting)]


def missing_slices(locations: Sequence[float], spacing: float) -> list[tuple[float, float, int]]:
    """``(lower, upper, count)`` for each gap of a stack's distinct slice locations that lacks ``count``
    slices at ``spacing``."""
    distinct = distinct_locations(locations)
    gaps = []
    for lower, upper in zip(distinct[:-1], distinct[1:], strict=True):
        count = int(round((upper - lower) / spacing)) - 1
        if count > 0:
            gaps.append((float(lower), float(upper), count))
    return gaps


def by_stack(areas: Sequence[SliceArea]) -> dict[str, list[SliceArea]]:
    """Group areas by stack, keeping the input order within each."""
    stacks: dict[str, list[SliceArea]] = defaultdict(list)
    for area in areas:
        stacks[area.stack].append(area)
    return dict(stacks)


def assign_phases(areas: Sequence[SliceArea]) -> tuple[list[SliceArea], dict[str, str]]:
    """Choose ED and ES of every stack whose phases are not given (module docstring).

    Args:
        areas: the images of one or more stacks. A stack in which any image already has phase ED or
            ES is taken to have its phases given and is left as it is.

    Returns:
        ``(areas with phases, stack -> rule)``, the areas in input order; the rule is ``given``,
        ``min-total-volume`` (ED and ES the frame indices of largest and smallest total volume) or
        ``min-area-per-slice`` (each slice's largest and smallest area).
    """
    phases: dict[tuple[str, str], str] = {}
    rules: dict[str, str] = {}
    for stack, members in by_stack(areas).items():
        if any(area.phase in ("ED", "ES") for area in members):
            rules[stack] = "given"
            continue
        slices = list(frames_by_slice(members).values())
        n_frames = max(len(frames) for frames in slices)
        full = [frames for frames in slices if len(frames) == n_frames]
        # Frames can be matched to instants only where trigger times tell the instants apart.
        timed = all(area.trigger_time is not None for area in members) and all(
            np.all(np.diff([area.trigger_time for area in frames]) > 0) for frames in full)
        if n_frames > 1 and (len(full) == len(slices) or (timed and 2 * len(full) > len(slices))):
            rules[stack] = "min-total-volume"
            ed_index, es_index = extreme_instants(full)
            for frames in full:
                phases[stack, frames[ed_index].id] = "ED"
                phases[stack, frames[es_index].id] = "ES"
            partial = [frames for frames in slices if len(frames) < n_frames]
            if partial:
                instants = np.median([[area.trigger_time for area in frames] for frames in full], axis=0)
                tolerance = float(np.median(np.diff(instants))) / 2
            for frames in partial:
                for phase, index in (("ED", ed_index), ("ES", es_index)):
                    match = frame_at_instant(frames, instants[index], tolerance)
                    if match is not None:
                        phases[stack, match.id] = phase
        else:
            rules[stack] = "min-area-per-slice"
            for frames in slices:
                ed = max(frames, key=lambda area: area.area_mm2)
                phases[stack, ed.id] = "ED"
                if len(frames) > 1:
                    phases[stack, min((area for area in frames if area is not ed), key=lambda a: a.area_mm2).id] = "ES"
    assigned = [area if rules[area.stack] == "given" else replace(area, phase=phases.get((area.stack, area.id), ""))
                for area in areas]
    return assigned, rules


def extreme_instants(full_slices: Sequence[Sequence[SliceArea]]) -> tuple[int, int]:
    """(ED, ES) frame indices of the largest and smallest total area over slices that each hold every
    frame of the cine in cycle order; ES is another frame than ED even when the curve is flat."""
    totals = np.sum([[area.area_mm2 for area in frames] for frames in full_slices], axis=0)
    ed_index = int(np.argmax(totals))
    es_index = min((k for k in range(len(totals)) if k != ed_index), key=lambda k: totals[k])
    return ed_index, es_index


def frame_at_instant(frames: Sequence[SliceArea], instant: float, tolerance: float) -> SliceArea | None:
    """The frame of a slice that lacks some of the cine's frames taken at an instant of the slices that
    hold them all (``instant``: that instant's median trigger time, ms): the frame nearest in trigger
    time, within ``tolerance`` (half the median time between instants); None when no frame is that close
    (the slice lacks it)."""
    nearest = min(frames, key=lambda area: abs(area.trigger_time - instant))
    return nearest if abs(nearest.trigger_time - instant) < tolerance else None


def fill_missing_es(areas: Sequence[SliceArea]) -> tuple[list[SliceArea], list[str]]:
    """Count the ED slices that have no ES image as empty at ES, where the ES slices are a subset of them.

    Experts contour the cavity at ES on fewer slices than at ED (RVSC: the basal slice, which the
    ventricle has left by end-systole, in every training patient): those slices hold no cavity at ES,
    and an EF needs both phases on the same slices (:func:`stack_volumes`). Only slices at the ends of
    the ED stack count as empty: a slice missing at ES between contoured ones holds cavity, so that
    stack is left as it is (with a note), as are stacks whose ES slices are not all ED slices.

    Returns:
        (the areas with a zero-area ES area added per missing slice, notes).
    """
    filled, notes = list(areas), []
    for stack, members in by_stack(areas).items():
        ed = {area.slice_key: area for area in members if area.phase == "ED"}
        es = {area.slice_key for area in members if area.phase == "ES"}
        missing = [key for key in ed if key not in es]
        if not es or not missing or not es <= set(ed):
            continue
        inside = [key for key in missing if min(es) < key < max(es)]
        if inside:
            notes.append(f"{stack}: ES is missing on {len(inside)} slice(s) between contoured ones (first at "
                         f"{inside[0]:g} mm), which cannot be empty: no ES volume is completed")
            continue
        filled += [replace(ed[key], id=f"{ed[key].id}-es-empty", phase="ES", area_mm2=0.0, trigger_time=None,
                           frame=None) for key in missing]
        notes.append(f"{stack}: ES is contoured on {len(es)} of {len(ed)} ED slices; the other {len(missing)} count as "
                     "empty at ES")
    return filled, notes


def stack_volumes(areas: Sequence[SliceArea], es_rules: Mapping[str, str] | None = None) -> list[StackVolumes]:
    """EDV, ESV and EF of every stack with at least two slice locations.

    Args:
        areas: images with their phases (see :func:`assign_phases`).
        es_rules: stack -> how ES was chosen (recorded in the result); ``given`` when absent.

    Returns:
        one :class:`StackVolumes` per stack that has two or more slice locations, in order of first
        appearance. Stacks with fewer locations have no volume (module docstring).
    """
    es_rules = es_rules or {}
    results = []
    for stack, members in by_stack(areas).items():
        locations = [area.slice_location for area in members]
        thicknesses = [area.thickness_mm for area in members if area.thickness_mm]
        spacing = slice_spacing_mm(locations, float(np.median(thicknesses)) if thicknesses else None)
        if spacing is None:
            continue
        notes = [f"{count} slice(s) missing between {lower:g} and {upper:g} mm: their slabs are not in the volumes"
                 for lower, upper, count in missing_slices(locations, spacing)]
        volumes, slice_sets, off_grid = {}, {}, set()
        for phase in ("ED", "ES"):
            chosen = [area for area in members if area.phase == phase]
            keys = [area.slice_key for area in chosen]
            slice_sets[phase] = set(keys)
            if len(slice_sets[phase]) < len(chosen):
                repeated = min(key for key, count in Counter(keys).items() if count > 1)
                notes.append(f"{phase}: more than one image on a slice (first at {repeated:g} mm); each slice counts "
                             "once, by their mean area")
            # The slabs of the phase's own slices: a slice without an image of this phase (a frame left
            # without a phase) takes no share of its neighbours' slabs.
            volumes[phase] = None
            if chosen:
                slabs, meeting = slab_thicknesses(keys, spacing)
                off_grid.update(meeting)
                volumes[phase] = phase_volume_ml(chosen, slabs)
        if off_grid:
            lower, upper = min(off_grid)
            notes.append(f"{len(off_grid)} pair(s) of neighbouring slices are no whole number of {spacing:g} mm steps "
                         f"apart (first {lower:g} and {upper:g} mm): their slabs meet halfway between them")
        ef = None
        if volumes["ED"] and volumes["ES"] is not None:
            if slice_sets["ED"] == slice_sets["ES"]:
                ef = 100.0 * (volumes["ED"] - volumes["ES"]) / volumes["ED"]
            else:
                notes.append(f"no EF: ED is on {len(slice_sets['ED'])} slice(s) and ES on {len(slice_sets['ES'])}, "
                             "not the same ones")
        if volumes["ED"] is not None and volumes["ES"] is not None and volumes["ES"] > volumes["ED"]:
            notes.append(f"ESV ({volumes['ES']:.1f} mL) exceeds EDV ({volumes['ED']:.1f} mL): check the ED and ES "
                         "phases and the segmentation")
        if es_rules.get(stack) == "min-area-per-slice" and volumes["ES"] is not None:
            notes.append("the slices have different numbers of frames, so ED and ES are each slice's largest and "
                         "smallest area, which may be different instants on different slices")
        if es_rules.get(stack) == "min-total-volume":
            notes += partial_slice_notes(members)
        n_slices = len({area.slice_key for area in members})
        results.append(StackVolumes(
            stack=stack, slice_spacing_mm=spacing, n_slices=n_slices, ed_slices=len(slice_sets["ED"]),
            es_slices=len(slice_sets["ES"]), ed_volume_ml=volumes["ED"], es_volume_ml=volumes["ES"],
            ef_percent=ef, es_rule=es_rules.get(stack, "given"), notes=notes,
            stroke_volume_ml=None if ef is None else volumes["ED"] - volumes["ES"]))
    return results


def phase_volume_ml(images: Sequence[SliceArea], slabs: Mapping[float, float]) -> float:
    """Summation of discs over the slices of one phase's images (mL): each slice's mean area (mm^2; one
    image per slice but for a repeated acquisition) times its slab (mm, :func:`slab_thicknesses`)."""
    areas: dict[float, list[float]] = defaultdict(list)
    for image in images:
        areas[image.slice_key].append(image.area_mm2)
    return sum(float(np.mean(values)) * slabs[key] for key, values in areas.items()) / 1000.0


def partial_slice_notes(members: Sequence[SliceArea]) -> list[str]:
    """Notes on the slices of a stack that lack some of its cine's frames (their ED and ES frames were
    matched by trigger time, :func:`frame_at_instant`), and on those left without a phase."""
    slices = frames_by_slice(members)
    n_frames = max(len(frames) for frames in slices.values())
    partial = [key for key, frames in slices.items() if len(frames) < n_frames]
    if not partial:
        return []
    notes = [f"{len(partial)} slice(s) hold fewer than the cine's {n_frames} frames (first at {partial[0]:g} mm); "
             "their ED and ES frames were matched to the other slices' instants by trigger time"]
    for phase in ("ED", "ES"):
        unmatched = [key for key in partial if not any(area.phase == phase for area in slices[key])]
        if unmatched:
            notes.append(f"{len(unmatched)} of those slice(s) have no frame near {phase} (first at "
                         f"{unmatched[0]:g} mm) and are not in the {phase} volume")
    return notes


def volume_errors(pred_volumes: Mapping[str, Mapping] | Sequence[Mapping],
                  truth: Mapping[str, Mapping] | Sequence[Mapping]) -> dict:
    """Errors of predicted EDV, ESV and EF against reference values, per patient (or stack).

    Args:
        pred_volumes: patient -> ``{"ed_volume_ml", "es_volume_ml", "ef_percent"}`` (e.g. the
            ``volumes`` of :func:`rvseg.predict.predict`'s summary), or a list of such dicts each
            with a ``stack`` or ``patient`` key (:meth:`StackVolumes.to_dict` rows).
        truth: the same for the reference, e.g. the ``truth`` list of a phantom's ``phantom.json``.

    Returns:
        ``{"patients": {patient: {key: {"pred", "truth", "error", "relative_error"}}},
        "max_relative_error": {key: float or None}, "missing": [patients of truth without a
        prediction]}`` for the keys of :data:`VOLUME_KEYS`. ``error`` is pred - truth (mL, or EF
        points); ``relative_error`` is ``|error| / |truth|``. A quantity missing on either side
        (e.g. no EF) has None for both errors and does not enter the maxima.
    """
    pred, reference = _keyed(pred_volumes), _keyed(truth)
    patients: dict[str, dict] = {}
    for patient in sorted(set(pred) & set(reference)):
        patients[patient] = {key: _error(pred[patient].get(key), reference[patient].get(key)) for key in VOLUME_KEYS}
    maxima = {}
    for key in VOLUME_KEYS:
        values = [errors[key]["relative_error"] for errors in patients.values()
                  if errors[key]["relative_error"] is not None]
        maxima[key] = max(values) if values else None
    return {"patients": patients, "max_relative_error": maxima, "missing": sorted(set(reference) - set(pred))}


def agreement(errors: Mapping) -> dict:
    """Bland-Altman agreement of predicted and reference volumes over patients.

    Args:
        errors: the result of :func:`volume_errors`.

    Returns:
        per key of :data:`VOLUME_KEYS`: ``n`` (patients with both values), ``bias`` (mean of pred -
        truth), ``sd`` (sample standard deviation of pred - truth; limits of agreement are bias +/- 1.96
        sd), ``mae`` (mean absolute error) and ``r`` (Pearson correlation of pred and truth); None where
        undefined (``sd`` needs two patients, ``r`` three and values that vary).
    """
    result = {}
    for key in VOLUME_KEYS:
        pairs = np.array([(item[key]["pred"], item[key]["truth"]) for item in errors["patients"].values()
                          if item[key]["error"] is not None], dtype=np.float64).reshape(-1, 2)
        differences = pairs[:, 0] - pairs[:, 1]
        n = len(pairs)
        varies = n >= 3 and pairs[:, 0].std() > 0 and pairs[:, 1].std() > 0
        result[key] = {"n": n, "bias": float(differences.mean()) if n else None,
                       "sd": float(differences.std(ddof=1)) if n >= 2 else None,
                       "mae": float(np.abs(differences).mean()) if n else None,
                       "r": float(np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1]) if varies else None}
    return result


def frames_by_slice(members: Sequence, position: Callable = attrgetter("slice_location")) -> dict[float, list]:
    """slice location (rounded as :attr:`SliceArea.slice_key`) -> its images in :func:`cycle_order`.

    ``members``: SliceAreas, or anything :func:`cycle_order` sorts, with ``position(member)`` its slice
    location in mm (e.g. :class:`rvseg.data.sources.InputImage` with :func:`rvseg.predict.slice_position`).
    """
    slices: dict[float, list] = defaultdict(list)
    for member in members:
        slices[round(position(member), LOCATION_DECIMALS)].append(member)
    return {key: cycle_order(frames) for key, frames in sorted(slices.items())}


def cycle_order(frames: Sequence) -> list:
    """The frames of one slice in cycle order: by trigger time when every frame has one, else by frame
    number when every frame has one, else by id with its numbers compared as numbers (``...-81`` before
    ``...-100``). One key for the whole slice: a frame without a trigger time sorted after the others
    would shift every later frame of its slice by one instant. (``frames``: anything with
    ``trigger_time``, ``frame`` and ``id``, e.g. SliceAreas.)"""
    if all(frame.trigger_time is not None for frame in frames):
        return sorted(frames, key=lambda f: (f.trigger_time, f.frame if f.frame is not None else -1, natural_key(f.id)))
    if all(frame.frame is not None for frame in frames):
        return sorted(frames, key=lambda f: (f.frame, natural_key(f.id)))
    return sorted(frames, key=lambda f: natural_key(f.id))


def natural_key(text: str) -> tuple:
    """Sort key of a text with its runs of digits compared as numbers."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part)


def _keyed(volumes: Mapping[str, Mapping] | Sequence[Mapping]) -> dict[str, Mapping]:
    if isinstance(volumes, Mapping):
        return dict(volumes)
    keyed = {}
    for row in volumes:
        name = row.get("stack", row.get("patient"))
        if name is None:
            raise ValueError("each volume row needs a 'stack' or 'patient' key")
        keyed[str(name)] = row
    return keyed


def _error(pred: float | None, truth: float | None) -> dict:
    if pred is None or truth is None or (isinstance(pred, float) and math.isnan(pred)):
        return {"pred": pred, "truth": truth, "error": None, "relative_error": None}
    error = float(pred) - float(truth)
    relative = abs(error) / abs(float(truth)) if truth else None
    return {"pred": float(pred), "truth": float(truth), "error": error, "relative_error": relative}

"""RV areas, volumes by summation of discs, ED/ES selection and volume errors (rvseg.volumes)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from rvseg.data.formats import read_dataset
from rvseg.data.phantom import write_phantom
from rvseg.data.rvsc import read_rvsc
from rvseg.volumes import (
    SliceArea,
    agreement,
    area_mm2,
    assign_phases,
    fill_missing_es,
    frames_by_slice,
    slab_thicknesses,
    slice_spacing_mm,
    stack_volumes,
    volume_errors,
)


def cine(stack: str, locations, areas_by_slice, trigger_step: float = 40.0) -> list[SliceArea]:
    """Images of a cine stack: ``areas_by_slice[s][k]`` is the area of frame k on slice s."""
    images = []
    for s, (location, areas) in enumerate(zip(locations, areas_by_slice, strict=True)):
        for k, area in enumerate(areas):
            images.append(SliceArea(stack=stack, id=f"{stack}-s{s}-f{k}", slice_location=location, area_mm2=area,
                                    trigger_time=k * trigger_step, frame=100 * s + k))
    return images


def phases_of(areas: list[SliceArea]) -> dict[str, str]:
    return {area.id: area.phase for area in areas if area.phase}


def test_area_uses_both_pixel_spacings():
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:7] = True  # 12 pixels
    assert area_mm2(mask, (0.5, 2.0)) == pytest.approx(12.0)
    assert area_mm2(mask, (1.4, 1.4)) == pytest.approx(12 * 1.96)


def test_slice_spacing_is_the_distance_between_slice_centres():
    # RVSC patient 9: 7 mm thick slices at 22.45, 30.85, 39.25 -> 8.4 mm apart (a 1.4 mm gap).
    assert slice_spacing_mm([22.45, 30.85, 39.25, 30.85]) == pytest.approx(8.4)
    # One missing slice does not stretch the spacing of the others.
    assert slice_spacing_mm([0.0, 7.0, 21.0, 28.0]) == pytest.approx(7.0)
    assert slice_spacing_mm([5.0, 5.001]) is None
    # A slice missing from a short stack: 10 mm apart, not the median 15 (which would add 50 %).
    assert slice_spacing_mm([0.0, 10.0, 30.0]) == pytest.approx(10.0)
    assert slice_spacing_mm([0.0, 10.1, 29.9, 40.0]) == pytest.approx(10.0, abs=0.1)
    # No grid fits without more holes than slices: the median.
    assert slice_spacing_mm([0.0, 0.5, 10.0, 20.0, 30.0]) == pytest.approx(9.75)
    # Several slices missing: still the grid step.
    assert slice_spacing_mm([0.0, 10.0, 30.0, 50.0]) == pytest.approx(10.0)
    assert slice_spacing_mm([0.0, 10.0, 30.0, 50.0, 70.0], thickness_mm=8.0) == pytest.approx(10.0)
    # With the slice thickness known, one extra slice half a step off the grid does not halve the
    # spacing of the whole stack (8 mm slices cannot be 5 mm apart).
    assert slice_spacing_mm([*range(0, 70, 10), 65.0], thickness_mm=8.0) == pytest.approx(10.0)
    assert slice_spacing_mm([*range(0, 100, 10), 45.0], thickness_mm=6.0) == pytest.approx(10.0)
    assert slice_spacing_mm([8.4 * k for k in range(8)] + [8.4 * 3 + 4.2], thickness_mm=7.0) == pytest.approx(8.4)
    assert slice_spacing_mm([7.5 * k for k in range(6)], thickness_mm=10.0) == pytest.approx(7.5)  # overlapping
    assert slice_spacing_mm([]) is None


def test_summation_of_discs_with_given_phases():
    areas = []
    for s, (location, ed, es) in enumerate([(0.0, 1000.0, 500.0), (8.4, 800.0, 400.0), (16.8, 600.0, 300.0)]):
        areas.append(SliceArea("P1", f"ed{s}", location, ed, phase="ED"))
        areas.append(SliceArea("P1", f"es{s}", location, es, phase="ES"))
    (result,) = stack_volumes(areas)
    assert result.slice_spacing_mm == pytest.approx(8.4)
    assert result.ed_volume_ml == pytest.approx(2400 * 8.4 / 1000)
    assert result.es_volume_ml == pytest.approx(1200 * 8.4 / 1000)
    assert result.ef_percent == pytest.approx(50.0)
    assert result.stroke_volume_ml == pytest.approx(1200 * 8.4 / 1000)
    assert (result.n_slices, result.ed_slices, result.es_slices, result.es_rule) == (3, 3, 3, "given")


def test_es_is_the_frame_of_minimum_total_volume_when_slices_share_frames():
    # Slice 0 alone has its smallest area at frame 3; the stack as a whole is smallest at frame 2.
    areas = cine("S", [0.0, 10.0, 20.0],
                 [[900, 700, 520, 500, 800], [700, 520, 400, 450, 650], [400, 300, 200, 260, 380]])
    shuffled = [areas[i] for i in np.random.default_rng(0).permutation(len(areas))]
    assigned, rules = assign_phases(shuffled)
    assert rules == {"S": "min-total-volume"}
    assert [area.id for area in assigned] == [area.id for area in shuffled]  # input order kept
    assert phases_of(assigned) == {"S-s0-f0": "ED", "S-s1-f0": "ED", "S-s2-f0": "ED",
                                   "S-s0-f2": "ES", "S-s1-f2": "ES", "S-s2-f2": "ES"}
    (result,) = stack_volumes(assigned, rules)
    assert result.ed_volume_ml == pytest.approx((900 + 700 + 400) * 10 / 1000)
    assert result.es_volume_ml == pytest.approx((520 + 400 + 200) * 10 / 1000)
    assert result.es_rule == "min-total-volume"


def test_ed_is_the_lowest_trigger_time_not_the_first_file():
    areas = [SliceArea("S", "late", 0.0, 100.0, trigger_time=300.0, frame=0),
             SliceArea("S", "first", 0.0, 900.0, trigger_time=0.0, frame=1),
             SliceArea("S", "mid", 0.0, 50.0, trigger_time=150.0, frame=2),
             SliceArea("S", "b-first", 9.0, 800.0, trigger_time=0.0, frame=3),
             SliceArea("S", "b-mid", 9.0, 40.0, trigger_time=150.0, frame=4),
             SliceArea("S", "b-late", 9.0, 90.0, trigger_time=300.0, frame=5)]
    assigned, _ = assign_phases(areas)
    assert phases_of(assigned) == {"first": "ED", "mid": "ES", "b-first": "ED", "b-mid": "ES"}


def test_ed_and_es_per_slice_when_frame_counts_differ():
    # As the shared RVSC patient 9: one slice with a whole cine, two with two frames each.
    areas = cine("P09", [22.45, 30.85, 39.25], [[800, 700, 500, 650], [600, 650], [400, 300]])
    assigned, rules = assign_phases(areas)
    assert rules == {"P09": "min-area-per-slice"}
    # Each slice's largest area is ED, whichever frame it is; its smallest other one is ES.
    assert phases_of(assigned) == {"P09-s0-f0": "ED", "P09-s0-f2": "ES", "P09-s1-f1": "ED", "P09-s1-f0": "ES",
                                   "P09-s2-f0": "ED", "P09-s2-f1": "ES"}
    (result,) = stack_volumes(assigned, rules)
    assert result.ed_volume_ml == pytest.approx((800 + 650 + 400) * 8.4 / 1000)
    assert result.es_volume_ml == pytest.approx((500 + 600 + 300) * 8.4 / 1000)
    assert any("different instants" in note for note in result.notes)


def test_a_missing_slice_is_noted_and_its_slab_left_out():
    areas = [SliceArea("S", f"s{k}", location, 100.0, phase=phase)
             for k, location in enumerate((0.0, 10.0, 30.0)) for phase in ("ED", "ES")]
    (result,) = stack_volumes(areas)
    assert result.slice_spacing_mm == pytest.approx(10.0) and result.ed_volume_ml == pytest.approx(3.0)
    assert result.notes == ["1 slice(s) missing between 10 and 30 mm: their slabs are not in the volumes"]
    # The images' slice thickness reaches the spacing: an extra slice half-way stays an extra slice.
    extra = [SliceArea("S", f"s{location}", location, 100.0, phase="ED", thickness_mm=8.0)
             for location in (0.0, 10.0, 20.0, 25.0, 30.0, 40.0)]
    (result,) = stack_volumes(extra)
    assert result.slice_spacing_mm == pytest.approx(10.0)


def test_an_extra_slice_or_an_uneven_step_counts_no_slab_twice():
    """A cylinder of 1000 mm^2 over five 10 mm slabs is 50 mL, with or without an extra slice at 25 mm:
    the slabs around it meet halfway (10, 10, 7.5, 5, 7.5, 10 mm), not 10 mm each (60 mL)."""
    def cylinder(locations, thickness=8.0):
        return [SliceArea("S", f"{phase}{location}", location, area, phase=phase, thickness_mm=thickness)
                for location in locations for phase, area in (("ED", 1000.0), ("ES", 500.0))]

    (result,) = stack_volumes(cylinder([0.0, 10.0, 20.0, 25.0, 30.0, 40.0]))
    assert (result.slice_spacing_mm, result.ed_volume_ml, result.es_volume_ml, result.ef_percent) == pytest.approx(
        (10.0, 50.0, 25.0, 50.0))
    assert result.notes == ["2 pair(s) of neighbouring slices are no whole number of 10 mm steps apart (first 20 "
                            "and 25 mm): their slabs meet halfway between them"]
    # Uneven steps: each slab reaches halfway to a closer neighbour, the spacing (the median) to the others.
    (result,) = stack_volumes(cylinder([0.0, 6.0, 16.0, 26.0, 36.0], thickness=None))
    assert result.slice_spacing_mm == pytest.approx(10.0) and result.ed_volume_ml == pytest.approx(
        (8.0 + 8.0 + 10.0 + 10.0 + 10.0) * 1000 / 1000)
    # A displaced slice (18.5 for 20 mm) and a longer step (14 mm, nothing missing): the slabs meet halfway,
    # so the volume is the stack's extent plus one spacing, neither less nor more.
    (result,) = stack_volumes(cylinder([0.0, 10.0, 18.5, 30.0, 40.0]))
    assert result.ed_volume_ml == pytest.approx(50.0)
    (result,) = stack_volumes(cylinder([0.0, 10.0, 20.0, 34.0, 44.0]))
    assert result.ed_volume_ml == pytest.approx(54.0)
    # A slice with no image of either phase (a frame left without one) takes no share of the others' slabs.
    unphased = [*cylinder([0.0, 10.0, 20.0, 30.0, 40.0]), SliceArea("S", "extra", 25.0, 900.0, thickness_mm=8.0)]
    (result,) = stack_volumes(unphased)
    assert (result.ed_volume_ml, result.es_volume_ml) == pytest.approx((50.0, 25.0)) and result.notes == []
    # On a grid, jittered and missing a slice, every slab is the spacing: the volume is areas x spacing.
    locations = [0.02, 8.41, 16.79, 33.6, 42.01]
    slabs, off_grid = slab_thicknesses(locations, slice_spacing_mm(locations))
    assert off_grid == [] and list(slabs.values()) == pytest.approx([slice_spacing_mm(locations)] * 5)


def test_two_images_of_one_phase_on_one_slice_count_once_by_their_mean_area():
    areas = [SliceArea("S", f"{phase}{location}", location, area, phase=phase)
             for location in (0.0, 10.0, 20.0) for phase, area in (("ED", 1000.0), ("ES", 500.0))]
    (result,) = stack_volumes([*areas, SliceArea("S", "repeat", 10.0, 800.0, phase="ED")])
    assert result.ed_volume_ml == pytest.approx((1000 + 900 + 1000) * 10 / 1000)
    assert result.ef_percent == pytest.approx(100 * (29 - 15) / 29)
    assert result.notes == ["ED: more than one image on a slice (first at 10 mm); each slice counts once, by their "
                            "mean area"]


def drop_frames(areas: list[SliceArea], *ids: str) -> list[SliceArea]:
    return [area for area in areas if area.id not in ids]


def test_a_slice_missing_one_frame_keeps_one_ed_and_one_es_instant_for_the_whole_heart():
    """A slice without one of the cine's frames (a lost file): ED and ES are still the instants of
    largest and smallest total volume, matched on that slice by trigger time, not its own extremes."""
    full = [[900, 800, 500, 700], [700, 650, 400, 600], [500, 450, 300, 480]]
    areas = drop_frames(cine("S", [0.0, 8.0, 16.0], full), "S-s1-f1")
    # Alone, slice 1 would take frame 3 (600) as ES: its smallest remaining area is frame 2 (400),
    # so make its frame 3 smaller than everything to show the instant wins over the slice's own minimum.
    areas = [replace(area, area_mm2=100.0) if area.id == "S-s1-f3" else area for area in areas]
    assigned, rules = assign_phases(areas)
    assert rules == {"S": "min-total-volume"}
    assert phases_of(assigned) == {"S-s0-f0": "ED", "S-s0-f2": "ES", "S-s1-f0": "ED", "S-s1-f2": "ES",
                                   "S-s2-f0": "ED", "S-s2-f2": "ES"}
    (result,) = stack_volumes(assigned, rules)
    assert result.ef_percent == pytest.approx(100 * (1 - 1200 / 2100))
    assert [note for note in result.notes if "fewer than the cine's 4 frames (first at 8 mm)" in note]


def test_a_slice_missing_its_es_frame_gets_no_other_instant_and_no_ef():
    areas = drop_frames(cine("S", [0.0, 8.0, 16.0], [[900, 800, 500, 700]] * 3), "S-s2-f2")
    assigned, rules = assign_phases(areas)
    assert phases_of(assigned)["S-s2-f0"] == "ED" and "ES" not in {
        area.phase for area in assigned if area.slice_location == 16.0}
    (result,) = stack_volumes(assigned, rules)
    assert result.ef_percent is None and result.stroke_volume_ml is None
    assert any("no EF" in note for note in result.notes)
    assert "1 of those slice(s) have no frame near ES (first at 16 mm) and are not in the ES volume" in result.notes


def test_equal_trigger_times_tell_no_instants_apart_so_each_slice_keeps_its_own_extremes():
    """An export that zeroes TriggerTime: matching by time would drop the partial slice from both volumes."""
    areas = [replace(area, trigger_time=0.0) for area in
             drop_frames(cine("S", [0.0, 8.0, 16.0], [[900, 800, 500, 700]] * 3), "S-s1-f1")]
    assigned, rules = assign_phases(areas)
    assert rules == {"S": "min-area-per-slice"}
    (result,) = stack_volumes(assigned, rules)
    assert result.ed_slices == result.es_slices == 3


def test_without_trigger_times_a_slice_missing_frames_falls_back_to_each_slices_extremes():
    areas = [replace(area, trigger_time=None) for area in
             drop_frames(cine("S", [0.0, 8.0, 16.0], [[900, 800, 500, 700]] * 3), "S-s1-f1")]
    _, rules = assign_phases(areas)
    assert rules == {"S": "min-area-per-slice"}


def test_ed_is_the_largest_volume_when_the_cine_starts_after_the_r_wave():
    # Sunnybrook-like: the contoured frames at 290 ms (systole) and 720 ms (diastole) on every slice.
    areas = [SliceArea("SCD", f"s{s}-{tt}", 10.0 * s, area, trigger_time=tt)
             for s in range(3) for tt, area in ((290.0, 500.0 - 50 * s), (720.0, 1000.0 - 90 * s))]
    assigned, rules = assign_phases(areas)
    assert rules == {"SCD": "min-total-volume"}
    assert {area.id for area in assigned if area.phase == "ED"} == {"s0-720.0", "s1-720.0", "s2-720.0"}
    (result,) = stack_volumes(assigned, rules)
    assert result.ef_percent == pytest.approx(100 * (1 - 1350 / 2730))
    assert result.notes == []


def test_a_given_es_larger_than_ed_is_noted():
    areas = [SliceArea("P", f"{phase}{s}", 8.0 * s, area, phase=phase)
             for s in range(2) for phase, area in (("ED", 400.0), ("ES", 900.0))]
    (result,) = stack_volumes(areas)
    assert result.ef_percent < 0
    assert any("exceeds EDV" in note for note in result.notes)


def test_given_phases_are_kept_and_stacks_are_separate():
    given = [SliceArea("A", "a0", 0.0, 10.0, trigger_time=0.0, phase="ES"),
             SliceArea("A", "a1", 0.0, 5.0, trigger_time=50.0, phase="ED")]
    unknown = cine("B", [0.0, 5.0], [[10, 4, 6], [8, 3, 5]])
    assigned, rules = assign_phases(given + unknown)
    assert rules == {"A": "given", "B": "min-total-volume"}
    assert assigned[:2] == given
    assert phases_of(assigned[2:]) == {"B-s0-f0": "ED", "B-s1-f0": "ED", "B-s0-f1": "ES", "B-s1-f1": "ES"}


def test_no_ef_when_ed_and_es_cover_different_slices():
    areas = [SliceArea("P", "e0", 0.0, 100.0, phase="ED"), SliceArea("P", "e1", 7.0, 80.0, phase="ED"),
             SliceArea("P", "s0", 0.0, 50.0, phase="ES")]
    (result,) = stack_volumes(areas)
    assert result.ed_volume_ml == pytest.approx(180 * 7 / 1000)
    assert result.es_volume_ml == pytest.approx(50 * 7 / 1000)
    assert result.ef_percent is None
    assert any("no EF" in note for note in result.notes)


def test_a_stack_with_one_slice_location_has_no_volume():
    areas = cine("one", [12.0], [[100, 50, 80]]) + cine("two", [0.0, 6.0], [[10, 5], [10, 5]])
    assigned, rules = assign_phases(areas)
    assert [result.stack for result in stack_volumes(assigned, rules)] == ["two"]


def test_volume_errors():
    pred = {"P01": {"ed_volume_ml": 110.0, "es_volume_ml": 45.0, "ef_percent": None},
            "P02": {"ed_volume_ml": 100.0, "es_volume_ml": 50.0, "ef_percent": 50.0}}
    truth = [{"patient": "P01", "ed_volume_ml": 100.0, "es_volume_ml": 50.0, "ef_percent": 50.0},
             {"patient": "P02", "ed_volume_ml": 100.0, "es_volume_ml": 40.0, "ef_percent": 60.0},
             {"patient": "P03", "ed_volume_ml": 90.0, "es_volume_ml": 40.0, "ef_percent": 55.6}]
    errors = volume_errors(pred, truth)
    p01 = errors["patients"]["P01"]
    assert p01["ed_volume_ml"] == {"pred": 110.0, "truth": 100.0, "error": pytest.approx(10.0),
                                   "relative_error": pytest.approx(0.1)}
    assert p01["es_volume_ml"]["relative_error"] == pytest.approx(0.1)
    assert p01["ef_percent"]["relative_error"] is None
    assert errors["patients"]["P02"]["es_volume_ml"]["relative_error"] == pytest.approx(0.25)
    assert errors["patients"]["P02"]["ef_percent"]["error"] == pytest.approx(-10.0)
    assert errors["max_relative_error"] == {"ed_volume_ml": pytest.approx(0.1), "es_volume_ml": pytest.approx(0.25),
                                            "ef_percent": pytest.approx(10 / 60)}
    assert errors["missing"] == ["P03"]


def test_phantom_reference_masks_reproduce_the_phantom_volumes(tmp_path):
    """The phantom's own contours, through the reader and volumes.py, give its true EDV/ESV/EF."""
    write_phantom(tmp_path / "phantom", patients=2, slices=3, frames=4, seed=3, shape=(128, 112), spacing_mm=2.2)
    truth = json.loads((tmp_path / "phantom" / "phantom.json").read_text())["truth"]
    report = read_rvsc(tmp_path / "phantom")
    areas = [SliceArea(stack=s.patient, id=s.id, slice_location=s.slice_location, phase=s.phase,
                       area_mm2=area_mm2(s.masks["endo"], s.spacing_mm)) for s in report.samples]
    assert {area.phase for area in areas} == {"ED", "ES"}
    results = stack_volumes(*assign_phases(areas))
    assert [r.stack for r in results] == ["P01", "P02"]
    assert all(r.slice_spacing_mm == pytest.approx(7.0) and r.es_rule == "given" for r in results)
    errors = volume_errors([r.to_dict() for r in results], truth)
    assert errors["missing"] == []
    for key, worst in errors["max_relative_error"].items():
        assert worst < 0.01, key
    for reference in truth:
        result = next(r for r in results if r.stack == reference["patient"])
        assert result.ed_volume_ml == pytest.approx(reference["ed_volume_ml"], rel=0.01)
        assert result.ef_percent == pytest.approx(reference["ef_percent"], rel=0.01)


def test_agreement_of_predicted_and_reference_volumes():
    truth = {f"P{k}": {"ed_volume_ml": ed, "es_volume_ml": 50.0, "ef_percent": None}
             for k, ed in enumerate((100.0, 150.0, 200.0, 120.0))}
    pred = {"P0": {"ed_volume_ml": 110.0, "es_volume_ml": 50.0}, "P1": {"ed_volume_ml": 140.0, "es_volume_ml": 50.0},
            "P2": {"ed_volume_ml": 215.0, "es_volume_ml": 50.0}}  # P3 missing: not paired
    result = agreement(volume_errors(pred, truth))
    differences = np.array([10.0, -10.0, 15.0])
    ed = result["ed_volume_ml"]
    assert ed["n"] == 3 and ed["bias"] == pytest.approx(5.0) and ed["mae"] == pytest.approx(35.0 / 3)
    assert ed["sd"] == pytest.approx(differences.std(ddof=1))
    assert ed["r"] == pytest.approx(np.corrcoef([110, 140, 215], [100, 150, 200])[0, 1])
    # Constant values have no correlation; no pairs have no statistics at all.
    assert result["es_volume_ml"] == {"n": 3, "bias": 0.0, "sd": 0.0, "mae": 0.0, "r": None}
    assert result["ef_percent"] == {"n": 0, "bias": None, "sd": None, "mae": None, "r": None}


def test_agreement_of_one_and_two_patients():
    truth = {"A": {"ed_volume_ml": 100.0}, "B": {"ed_volume_ml": 150.0}}
    one = agreement(volume_errors({"A": {"ed_volume_ml": 104.0}}, truth))["ed_volume_ml"]
    assert one == {"n": 1, "bias": 4.0, "sd": None, "mae": 4.0, "r": None}
    two = agreement(volume_errors({"A": {"ed_volume_ml": 104.0}, "B": {"ed_volume_ml": 148.0}}, truth))["ed_volume_ml"]
    assert two["n"] == 2 and two["sd"] == pytest.approx(6.0 / np.sqrt(2)) and two["r"] is None


def test_missing_es_slices_count_as_empty_where_es_is_within_ed():
    areas = [SliceArea("p", f"ed{k}", 10.0 * k, 100.0, phase="ED") for k in range(3)]
    areas += [SliceArea("p", f"es{k}", 10.0 * k, 40.0, phase="ES") for k in (1, 2)]
    filled, notes = fill_missing_es(areas)
    assert notes == ["p: ES is contoured on 2 of 3 ED slices; the other 1 count as empty at ES"]
    (volumes,) = stack_volumes(filled)
    assert volumes.es_volume_ml == pytest.approx(80.0 * 10 / 1000) and volumes.ef_percent == pytest.approx(
        100 * (300 - 80) / 300)
    # ES on a slice without ED: left as it is (no EF, as stack_volumes says).
    odd = [*areas[:2], SliceArea("p", "es9", 90.0, 40.0, phase="ES")]
    assert fill_missing_es(odd) == (odd, [])
    # ES missing between contoured slices holds cavity: not completed, said so, and no EF.
    gap = [*areas[:3], areas[3], SliceArea("p", "es0", 0.0, 40.0, phase="ES")]  # ES on slices 0 and 1, not 2
    assert [area.id for area in fill_missing_es(gap)[0][len(gap):]] == ["ed2-es-empty"]  # an end slice: filled
    middle = [*areas[:3], SliceArea("p", "es0", 0.0, 40.0, phase="ES"), areas[4]]  # ES on slices 0 and 2
    filled, notes = fill_missing_es(middle)
    assert filled == middle and notes == [
        "p: ES is missing on 1 slice(s) between contoured ones (first at 10 mm), which cannot be empty: no ES volume "
        "is completed"]
    assert stack_volumes(filled)[0].ef_percent is None


def test_sunnybrook_reference_contours_without_their_phases_give_positive_efs(shared_data):
    # The contoured frames of these heart-failure patients start in systole: the first frame is not ED.
    report = read_dataset(shared_data / "sunnybrook-subset", "auto")
    areas = [SliceArea(stack=s.patient, id=s.id, slice_location=s.slice_location, frame=s.frame,
                       area_mm2=area_mm2(s.masks[report.labels[0]], s.spacing_mm))
             for s in report.samples if s.masks.get(report.labels[0]) is not None]
    results = stack_volumes(*assign_phases(areas))
    assert len(results) == 5
    assert all(15 < result.ef_percent < 40 and not result.notes for result in results)


def test_one_frame_without_a_trigger_time_does_not_shift_its_slice():
    # Slice 0's frame 1 lacks its trigger time: the slice is ordered by frame number, not with it last.
    areas = [SliceArea("S", f"s{s}-f{f}", 10.0 * s, area, trigger_time=None if (s, f) == (0, 1) else 100.0 * f,
                       frame=f)
             for s in range(2) for f, area in enumerate((900.0, 400.0, 700.0))]
    assigned, rules = assign_phases(areas)
    assert rules == {"S": "min-total-volume"}
    assert {area.id for area in assigned if area.phase == "ES"} == {"s0-f1", "s1-f1"}


def test_frames_without_times_or_numbers_follow_the_numbers_in_their_ids():
    areas = [SliceArea("S", f"img-{n}", 0.0, 100.0) for n in (100, 81, 9)]
    (frames,) = frames_by_slice(areas).values()
    assert [area.id for area in frames] == ["img-9", "img-81", "img-100"]

"""The synthetic phantom: RVSC native layout, DICOM tags, contours that match the drawn anatomy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from scipy.ndimage import binary_dilation

from rvseg.data.contours import polygon_area, polygon_to_mask, read_contour_file
from rvseg.data.phantom import (
    CONTOUR_POINTS,
    PHANTOM_JSON,
    SLICE_THICKNESS_MM,
    cardiac_contraction,
    load_phantom_summary,
    write_phantom,
)
from rvseg.errors import ConfigError, DataError

PATIENTS, SLICES, FRAMES = 2, 3, 4
SHAPE = (256, 216)
SPACING_MM = 0.70  # the default, as RVSC


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom") / "study"
    summary = write_phantom(out, patients=PATIENTS, seed=3, slices=SLICES, frames=FRAMES)
    return out, summary


def frame_path(out: Path, patient: str, file_index: int) -> Path:
    number = patient[1:]
    return out / f"patient{number}" / f"{patient}dicom" / f"{patient}-{file_index:04d}.dcm"


def contour_path(out: Path, patient: str, file_index: int, kind: str) -> Path:
    number = patient[1:]
    name = f"{patient}-{file_index:04d}-{kind}contour-manual.txt"
    return out / f"patient{number}" / f"{patient}contours-manual" / name


def annotated_frames(summary):
    """(patient, slice, file index of ED, file index of ES) for every annotated slice."""
    for truth in summary.truth:
        for index in truth.annotated_slices:
            yield truth, index, index * FRAMES, index * FRAMES + truth.es_frame


def test_layout_and_counts(phantom):
    out, summary = phantom
    assert sorted(p.name for p in out.iterdir()) == ["patient01", "patient02", PHANTOM_JSON]
    for number in (1, 2):
        dicoms = sorted((out / f"patient{number:02d}" / f"P{number:02d}dicom").iterdir())
        assert [p.name for p in dicoms] == [f"P{number:02d}-{i:04d}.dcm" for i in range(SLICES * FRAMES)]
    contours = sorted(out.glob("patient*/P*contours-manual/*"))
    expected = {
        contour_path(out, truth.patient, file_index, kind)
        for truth, _, ed, es in annotated_frames(summary)
        for file_index in (ed, es)
        for kind in "io"
    }
    assert set(contours) == expected
    assert summary.dicom_files == PATIENTS * SLICES * FRAMES
    assert summary.contour_files == len(contours)
    assert summary.annotated_samples == len(contours) // 2
    assert summary.files_written == len([p for p in out.rglob("*") if p.is_file()])
    assert not list(out.rglob("*.tmp"))
    for truth in summary.truth:
        # The base slice always cuts the RV; only the most apical one may miss it.
        assert truth.annotated_slices[: SLICES - 1] == tuple(range(SLICES - 1))
        assert 0.35 * FRAMES - 1 <= truth.es_frame <= 0.45 * FRAMES + 1 and 0 < truth.es_frame < FRAMES


def test_list_files_name_every_contour_with_windows_paths(phantom):
    out, summary = phantom
    for truth in summary.truth:
        folder = out / f"patient{truth.patient[1:]}"
        raw = (folder / f"{truth.patient}list.txt").read_bytes()
        assert raw.endswith(b"\r\n") and raw.count(b"\r\n") == raw.count(b"\n")
        lines = raw.decode().splitlines()
        assert all(line.startswith(f".\\{folder.name}\\{truth.patient}contours-manual\\") for line in lines)
        listed = [out / line.replace("\\", "/") for line in lines]
        assert all(path.is_file() for path in listed)
        assert sorted(listed) == sorted(folder.glob(f"{truth.patient}contours-manual/*.txt"))
        assert len(lines) == 4 * len(truth.annotated_slices)


def test_dicom_tags_read_back(phantom):
    out, summary = phantom
    for truth in summary.truth:
        rr_ms = 60000.0 / truth.heart_rate_bpm
        locations = []
        for index in range(SLICES):
            for frame in range(FRAMES):
                file_index = index * FRAMES + frame
                ds = pydicom.dcmread(frame_path(out, truth.patient, file_index))
                pixels = ds.pixel_array
                assert pixels.dtype == np.uint16 and pixels.shape == SHAPE
                assert 0 < pixels.max() < 4000
                assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
                assert ds.SOPClassUID == MRImageStorage == ds.file_meta.MediaStorageSOPClassUID
                assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
                assert [float(v) for v in ds.PixelSpacing] == [SPACING_MM, SPACING_MM]
                assert float(ds.SliceThickness) == float(ds.SpacingBetweenSlices) == SLICE_THICKNESS_MM
                assert float(ds.TriggerTime) == pytest.approx(frame * rr_ms / FRAMES, abs=1e-3)
                assert int(ds.CardiacNumberOfImages) == FRAMES
                assert int(ds.InstanceNumber) == file_index + 1
                assert "SYNTHETIC" in ds.ImageComments
                orientation = np.array(ds.ImageOrientationPatient, dtype=float)
                normal = np.cross(orientation[:3], orientation[3:])
                assert np.dot(orientation[:3], orientation[3:]) == pytest.approx(0.0, abs=1e-6)
                position = np.array(ds.ImagePositionPatient, dtype=float)
                assert float(np.dot(position, normal)) == pytest.approx(float(ds.SliceLocation), abs=1e-3)
                locations.append(float(ds.SliceLocation))
        per_slice = np.array(locations).reshape(SLICES, FRAMES)
        assert (per_slice == per_slice[:, :1]).all()
        np.testing.assert_allclose(np.diff(per_slice[:, 0]), SLICE_THICKNESS_MM, atol=1e-6)


def test_patients_get_their_own_series(phantom):
    out, _ = phantom
    first = pydicom.dcmread(frame_path(out, "P01", 0))
    second = pydicom.dcmread(frame_path(out, "P02", 0))
    assert first.PatientID != second.PatientID
    assert first.SeriesInstanceUID != second.SeriesInstanceUID
    assert pydicom.dcmread(frame_path(out, "P01", SLICES * FRAMES - 1)).SeriesInstanceUID == first.SeriesInstanceUID


def test_contours_bound_the_bright_rv_cavity_and_its_wall(phantom):
    out, summary = phantom
    for truth, _, ed, es in annotated_frames(summary):
        for file_index in (ed, es):
            image = pydicom.dcmread(frame_path(out, truth.patient, file_index)).pixel_array.astype(float)
            endo_xy = read_contour_file(contour_path(out, truth.patient, file_index, "i"), SHAPE)
            epi_xy = read_contour_file(contour_path(out, truth.patient, file_index, "o"), SHAPE)
            for xy in (endo_xy, epi_xy):
                assert CONTOUR_POINTS[0] <= len(xy) <= CONTOUR_POINTS[1]
            endo, epi = polygon_to_mask(endo_xy, SHAPE), polygon_to_mask(epi_xy, SHAPE)
            assert endo.sum() > 20
            assert not (endo & ~epi).any()
            wall = epi & ~endo
            outside_ring = binary_dilation(endo, iterations=1) & ~endo
            assert wall.sum() > 0.1 * endo.sum()
            cavity_mean = image[endo].mean()
            # The cavity is blood (bright); the wall and every pixel just outside it are darker.
            assert cavity_mean > 2.5 * image[wall].mean()
            assert cavity_mean > 2.0 * image[outside_ring].mean()
            # Pixel-exact: a threshold halfway splits the mask from its one-pixel ring.
            threshold = 0.5 * (cavity_mean + image[outside_ring].mean())
            assert (image[endo] > threshold).mean() > 0.99
            assert (image[outside_ring] > threshold).mean() < 0.01
            # The mask follows the polygon: pixel count close to the shoelace area.
            assert endo.sum() == pytest.approx(polygon_area(endo_xy), rel=0.05)


def test_rv_ed_larger_than_es_and_shrinks_toward_the_apex(phantom):
    _, summary = phantom
    for truth in summary.truth:
        ed, es = np.array(truth.ed_areas_px), np.array(truth.es_areas_px)
        assert (ed > es).all()
        assert (np.diff(ed) < 0).all()
        assert (0.3 < es / ed).all() and (es / ed < 0.65).all()


def test_volumes_and_ef_match_the_contour_files(phantom):
    out, summary = phantom
    voxel_ml = SPACING_MM**2 * SLICE_THICKNESS_MM / 1000.0
    for truth in summary.truth:
        volumes = []
        for offset in (0, truth.es_frame):
            pixels = 0
            for index in truth.annotated_slices:
                xy = read_contour_file(contour_path(out, truth.patient, index * FRAMES + offset, "i"))
                pixels += int(polygon_to_mask(xy, SHAPE).sum())
            volumes.append(pixels * voxel_ml)
        assert truth.ed_volume_ml == pytest.approx(volumes[0], rel=1e-12)
        assert truth.es_volume_ml == pytest.approx(volumes[1], rel=1e-12)
        assert truth.ef_percent == pytest.approx(100 * (volumes[0] - volumes[1]) / volumes[0])
        assert 40.0 <= truth.ef_percent <= 65.0
        assert 5.0 < truth.ed_volume_ml < 200.0


def test_summary_json_round_trips(phantom):
    out, summary = phantom
    data = json.loads((out / PHANTOM_JSON).read_text())
    assert data["complete"] is True and "synthetic" in data["generator"]
    assert data["truth"][0]["ed_volume_ml"] == summary.truth[0].ed_volume_ml
    assert load_phantom_summary(out) == summary


def test_cardiac_contraction_is_smooth_from_ed_to_es_and_back():
    frames, es_frame = 20, 8
    values = [cardiac_contraction(frame, frames, es_frame) for frame in range(frames)]
    assert values[0] == 0.0 and values[es_frame] == 1.0
    assert (np.diff(values[: es_frame + 1]) > 0).all() and (np.diff(values[es_frame:]) < 0).all()
    assert max(abs(np.diff(values))) < 0.3
    assert cardiac_contraction(frames, frames, es_frame) == pytest.approx(0.0)


def pixel_data_of(out: Path) -> list[bytes]:
    return [pydicom.dcmread(path).PixelData for path in sorted(out.rglob("*.dcm"))]


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    options = dict(patients=1, slices=2, frames=2)
    first = write_phantom(tmp_path / "a", seed=5, **options)
    second = write_phantom(tmp_path / "b", seed=5, **options)
    other = write_phantom(tmp_path / "c", seed=6, **options)
    assert pixel_data_of(tmp_path / "a") == pixel_data_of(tmp_path / "b")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    for relative in files:
        if relative.name != PHANTOM_JSON:
            assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes(), relative
    assert first.truth == second.truth
    assert all(a != b for a, b in zip(pixel_data_of(tmp_path / "a"), pixel_data_of(tmp_path / "c"), strict=True))
    assert first.truth[0].ed_volume_ml != other.truth[0].ed_volume_ml


def test_patient_depends_only_on_seed_and_number(tmp_path):
    write_phantom(tmp_path / "one", seed=1, patients=1, slices=1, frames=2)
    write_phantom(tmp_path / "two", seed=1, patients=2, slices=1, frames=2)
    assert pixel_data_of(tmp_path / "one") == pixel_data_of(tmp_path / "two" / "patient01")


def test_refuses_a_non_empty_folder_that_is_not_a_phantom(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty") as error:
        write_phantom(tmp_path, patients=1, slices=1, frames=2)
    assert str(tmp_path) in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        write_phantom(tmp_path / "file", patients=1, slices=1, frames=2)


def test_rewrites_a_previous_phantom_without_stale_patients(tmp_path):
    write_phantom(tmp_path, patients=2, slices=1, frames=2)
    summary = write_phantom(tmp_path, patients=1, slices=1, frames=2, seed=9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["patient01", PHANTOM_JSON]
    assert load_phantom_summary(tmp_path).seed == 9 == summary.seed


def test_load_refuses_a_foreign_json(tmp_path):
    (tmp_path / PHANTOM_JSON).write_text('{"generator": "someone else"}')
    with pytest.raises(DataError, match="not a phantom summary"):
        load_phantom_summary(tmp_path)
    with pytest.raises(DataError, match="not empty"):
        write_phantom(tmp_path, patients=1, slices=1, frames=2)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(patients=0), "patients"),
        (dict(patients=100), "patients"),
        (dict(frames=1), "frames"),
        (dict(slices=0), "slices"),
        (dict(seed=-1), "seed"),
        (dict(spacing_mm=0.0), "spacing"),
        (dict(shape=(64, 64)), "cannot hold the heart"),
    ],
)
def test_bad_options_raise_config_error_before_writing(tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        write_phantom(tmp_path / "out", **{"patients": 1, "slices": 1, "frames": 2, **options})
    assert not (tmp_path / "out").exists()


def test_rvsc_reader_reads_the_phantom(phantom):
    rvsc = pytest.importorskip("rvseg.data.rvsc")
    out, summary = phantom
    report = rvsc.read_rvsc(out)
    assert len(report.samples) == summary.annotated_samples
    assert report.patients == ["P01", "P02"]
    assert not report.skipped and not report.unfillable and not report.unmatched_contours
    assert len(report.unmatched_images) == summary.dicom_files - summary.annotated_samples
    by_id = {sample.id: sample for sample in report.samples}
    for truth, _, ed, es in annotated_frames(summary):
        ed_sample, es_sample = by_id[f"{truth.patient}-{ed:04d}"], by_id[f"{truth.patient}-{es:04d}"]
        assert (ed_sample.phase, es_sample.phase) == ("ED", "ES")
        assert ed_sample.spacing_mm == (SPACING_MM, SPACING_MM)
        assert ed_sample.slice_thickness_mm == SLICE_THICKNESS_MM
        assert set(ed_sample.masks) == {"endo", "epi"}

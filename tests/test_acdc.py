"""ACDC NIfTI reader, on small synthetic volumes written with nibabel."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rvseg.data.acdc import looks_like_acdc, read_acdc
from rvseg.errors import DataError

SHAPE = (32, 40, 4)
ZOOMS = (1.5, 1.6, 10.0)


def coded_image() -> np.ndarray:
    """Voxel (i, j, k) holds 10000 k + 100 i + j, so any slice or transpose is recognisable."""
    i, j, k = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    return (10000 * k + 100 * i + j).astype(np.int16)


def labels() -> np.ndarray:
    """RV 6 x 10 at i 4..9, j 10..19; LV cavity 10 x 10 inside a 1-voxel myocardium ring; last slice empty."""
    gt = np.zeros(SHAPE, dtype=np.uint8)
    gt[4:10, 10:20, :3] = 1
    gt[14:26, 19:31, :3] = 2
    gt[15:25, 20:30, :3] = 3
    return gt


def save(path: Path, data: np.ndarray, zooms: tuple[float, ...] = ZOOMS) -> None:
    volume = nib.Nifti1Image(data, np.diag([*zooms[:3], 1.0]))
    volume.header.set_zooms(zooms)
    nib.save(volume, path)


def write_patient(root: Path, number: int, frames: dict[int, bool], info: str | None, suffix: str = ".nii.gz") -> Path:
    """A patient folder; ``frames`` maps frame number -> whether it has a ground truth."""
    folder = root / f"patient{number:03d}"
    folder.mkdir(parents=True)
    for frame, with_gt in frames.items():
        save(folder / f"{folder.name}_frame{frame:02d}{suffix}", coded_image())
        if with_gt:
            save(folder / f"{folder.name}_frame{frame:02d}_gt{suffix}", labels())
    if info is not None:
        (folder / "Info.cfg").write_text(info)
    return folder


@pytest.fixture
def acdc(tmp_path: Path) -> Path:
    write_patient(tmp_path, 1, {1: True, 12: True}, "ED: 1\nES: 12\nGroup: DCM\nHeight: 184.0\nNbFrame: 30\n")
    folder = write_patient(tmp_path, 2, {1: True, 5: False, 8: True}, "ED: 01\nES: 8\n", suffix=".nii")
    save(folder / "patient002_4d.nii", np.zeros((*SHAPE, 2), dtype=np.int16), (*ZOOMS, 30.0))  # the cine: not read
    return tmp_path


def test_one_sample_per_slice_of_each_annotated_frame(acdc):
    report = read_acdc(acdc)
    assert report.format == "acdc" and report.labels == ("rv", "myo", "lv")
    assert len(report.samples) == 2 * 2 * 4
    assert report.patients == ["patient001", "patient002"]
    assert report.samples[0].id == "patient001-frame01-slice00"
    assert report.samples[-1].id == "patient002-frame08-slice03"
    assert report.unmatched_images == [str(acdc / "patient002" / "patient002_frame05.nii")]
    assert not (report.unmatched_contours or report.skipped or report.unfillable)


def test_phases_come_from_info_cfg(acdc):
    phases = {(s.patient, s.frame): s.phase for s in read_acdc(acdc).samples}
    assert phases == {
        ("patient001", 1): "ED",
        ("patient001", 12): "ES",
        ("patient002", 1): "ED",
        ("patient002", 8): "ES",
    }


def test_orientation_spacing_and_label_areas(acdc):
    samples = {s.id: s for s in read_acdc(acdc).samples}
    sample = samples["patient001-frame12-slice02"]
    assert sample.image.dtype == np.float32 and sample.image.shape == (32, 40)
    assert sample.image[5, 7] == 20000 + 100 * 5 + 7  # image[row, col] == data[row, col, z]
    assert sample.spacing_mm == pytest.approx((1.5, 1.6))
    assert sample.slice_thickness_mm == pytest.approx(10.0)
    assert (sample.slice, sample.frame) == ("2", 12)
    assert {name: int(mask.sum()) for name, mask in sample.masks.items()} == {"rv": 60, "myo": 44, "lv": 100}
    rows, cols = np.nonzero(sample.masks["rv"])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (4, 9, 10, 19)
    assert sample.image[rows, cols].min() == 20000 + 100 * 4 + 10
    assert sample.sources["rv"].endswith("patient001_frame12_gt.nii.gz")


def test_info_cfg_with_a_byte_order_mark(tmp_path):
    folder = write_patient(tmp_path, 3, {1: True, 9: True}, info=None)
    (folder / "Info.cfg").write_bytes("ED: 1\r\nES: 9\r\n".encode("utf-8-sig"))
    assert {(s.frame, s.phase) for s in read_acdc(folder).samples} == {(1, "ED"), (9, "ES")}


def test_slice_locations_follow_the_affine(acdc, tmp_path):
    samples = [s for s in read_acdc(acdc).samples if s.patient == "patient001" and s.frame == 1]
    assert [s.slice_location for s in samples] == pytest.approx([0.0, 10.0, 20.0, 30.0])
    # An oblique volume: slices 8 mm apart along a tilted normal, the k axis sheared (as a gantry tilt).
    rotation = np.array([[1.0, 0.0, 0.0], [0.0, 0.6, -0.8], [0.0, 0.8, 0.6]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.5, 1.6, 8.0])
    affine[:3, 2] += 3.0 * rotation[:, 0]  # shear within the plane: no change of the slice positions
    affine[:3, 3] = [-40.0, 25.0, 7.0]
    folder = tmp_path / "oblique" / "patient004"
    folder.mkdir(parents=True)
    for name, data in (("patient004_frame01.nii.gz", coded_image()), ("patient004_frame01_gt.nii.gz", labels())):
        nib.save(nib.Nifti1Image(data, affine), folder / name)
    locations = [s.slice_location for s in read_acdc(folder).samples]
    assert np.diff(locations) == pytest.approx([8.0] * 3)
    assert locations[0] == pytest.approx(float(np.dot(affine[:3, 3], rotation[:, 2])))


def test_acdc_headers_with_a_unit_sform_are_placed_by_their_qform_with_one_note(tmp_path):
    """As the real files: sform of unit scales, qform of the true voxel sizes, both coded. The slices are
    10 mm apart (not 1), so the volumes are right; the note is said once for all files."""
    from rvseg.data.nifti import QFORM_NOTE
    from rvseg.data.prepare import prepare

    for number in (1, 2):
        folder = tmp_path / "acdc" / f"patient{number:03d}"
        folder.mkdir(parents=True)
        (folder / "Info.cfg").write_text("ED: 1\nES: 12\n")
        for frame in (1, 12):
            for suffix, data in (("", coded_image()), ("_gt", labels())):
                image = nib.Nifti1Image(data, None)
                image.set_qform(np.diag([-1.5, -1.6, 10.0, 1.0]), code=1)
                image.set_sform(np.diag([-1.0, -1.0, 1.0, 1.0]), code=1)
                nib.save(image, folder / f"{folder.name}_frame{frame:02d}{suffix}.nii.gz")
    report = read_acdc(tmp_path / "acdc")
    locations = sorted({s.slice_location for s in report.samples if s.patient == "patient001" and s.frame == 1})
    assert np.diff(locations) == pytest.approx([10.0] * 3)
    assert report.samples[0].spacing_mm == pytest.approx((1.5, 1.6))
    summary = prepare(tmp_path / "acdc", tmp_path / "prepared")
    assert summary["notes"].count(QFORM_NOTE) == 1


def test_a_ground_truth_placed_elsewhere_than_its_image_is_noted(acdc):
    gt = acdc / "patient001" / "patient001_frame01_gt.nii.gz"
    nib.save(nib.Nifti1Image(labels(), np.diag([*ZOOMS, 1.0]) + np.array([[0, 0, 0, 0], [0, 0, 0, 0],
                                                                          [0, 0, 0, 30.0], [0, 0, 0, 0]])), gt)
    report = read_acdc(acdc)
    assert f"{gt}: its affine differs from its image patient001_frame01.nii.gz's (the voxels are matched by " \
           "index; in a viewer the two would not overlay)" in report.notes
    assert not any("affine differs" in note and "frame12" in note for note in report.notes)


def test_slice_with_empty_ground_truth_is_still_a_sample(acdc):
    sample = {s.id: s for s in read_acdc(acdc).samples}["patient002-frame01-slice03"]
    assert set(sample.masks) == {"rv", "myo", "lv"}
    assert not any(mask.any() for mask in sample.masks.values())
    assert sample.masks["rv"].shape == (32, 40)


def test_root_may_be_one_patient_folder_and_info_cfg_is_optional(tmp_path):
    folder = write_patient(tmp_path, 7, {3: True}, info=None)
    report = read_acdc(folder)
    assert [s.id for s in report.samples] == [f"patient007-frame03-slice{z:02d}" for z in range(4)]
    assert {s.phase for s in report.samples} == {"unknown"}
    assert report.notes == [
        f"{folder / 'Info.cfg'}: missing, so the phases (ED, ES) of patient007's frames are unknown"]


def test_info_cfg_frames_written_as_decimals_or_without_a_volume(tmp_path):
    folder = write_patient(tmp_path, 9, {1: True, 12: True}, info="ED: 1.0\nES: 13\n")
    report = read_acdc(folder)
    assert {s.id[:18]: s.phase for s in report.samples} == {"patient009-frame01": "ED", "patient009-frame12": "unknown"}
    assert report.notes == ["patient009: Info.cfg gives ES as frame 13, which has no frame volume "
                            "(patient009_frame13.nii.gz)"]


def test_info_cfg_without_es_is_noted_and_ed_equal_to_es_is_a_bad_file(tmp_path):
    folder = write_patient(tmp_path, 9, {1: True, 12: True}, info="ED: 1\nGroup: NOR\n")
    report = read_acdc(folder)
    assert {s.id[:18]: s.phase for s in report.samples} == {"patient009-frame01": "ED", "patient009-frame12": "unknown"}
    assert report.notes == [f"{folder / 'Info.cfg'}: gives no ES frame, so patient009 has no ES volume and no EF"]
    (folder / "Info.cfg").write_text("ED: 1\nES: 1\n")
    with pytest.raises(DataError, match="ED and ES are both frame 1"):
        read_acdc(folder)


def test_a_frame_stored_both_as_nii_and_nii_gz_is_a_bad_file(tmp_path):
    folder = write_patient(tmp_path, 7, {1: True}, info="ED: 1\nES: 9\n")
    save(folder / "patient007_frame01.nii", coded_image())
    with pytest.raises(DataError, match=r"a second file of frame 1 \(the other: patient007_frame01.nii\); keep one"):
        read_acdc(folder)
    report = read_acdc(folder, skip_bad=True)
    assert [entry["path"] for entry in report.skipped] == [str(folder / "patient007_frame01.nii.gz")]
    assert report.samples  # the other copy is read


def test_ground_truth_without_its_image_is_unmatched(acdc):
    (acdc / "patient001" / "patient001_frame12.nii.gz").unlink()
    report = read_acdc(acdc)
    assert report.unmatched_contours == [str(acdc / "patient001" / "patient001_frame12_gt.nii.gz")]
    assert len(report.samples) == 3 * 4


def test_label_values_outside_the_acdc_labels_are_bad(acdc):
    gt_path = acdc / "patient001" / "patient001_frame01_gt.nii.gz"
    bad = labels()
    bad[0, 0, 0] = 5
    save(gt_path, bad)
    with pytest.raises(DataError) as error:
        read_acdc(acdc)
    assert error.value.path == str(gt_path)
    assert "holds label values outside {0, 1, 2, 3}: 5" in str(error.value)

    report = read_acdc(acdc, skip_bad=True)
    assert report.skipped == [{"path": str(gt_path), "reason": "holds label values outside {0, 1, 2, 3}: 5"}]
    assert len(report.samples) == 3 * 4 and not any(s.id.startswith("patient001-frame01") for s in report.samples)


def test_ground_truth_shape_must_match_its_image(acdc):
    gt_path = acdc / "patient002" / "patient002_frame08_gt.nii"
    save(gt_path, labels()[:, :30])
    with pytest.raises(DataError) as error:
        read_acdc(acdc)
    assert error.value.path == str(gt_path)
    assert "has shape (32, 30, 4) but its image patient002_frame08.nii has (32, 40, 4)" in str(error.value)


def test_unreadable_volume_and_bad_info_cfg(acdc):
    image_path = acdc / "patient001" / "patient001_frame01.nii.gz"
    image_path.write_bytes(b"not a nifti file")
    with pytest.raises(DataError, match="patient001_frame01.nii.gz: cannot be read as a NIfTI volume"):
        read_acdc(acdc)
    (acdc / "patient002" / "Info.cfg").write_text("ED: first\n")
    report = read_acdc(acdc, skip_bad=True)
    assert [entry["path"] for entry in report.skipped] == [str(image_path), str(acdc / "patient002" / "Info.cfg")]
    assert "ED should be a frame number, not 'first'" in report.skipped[1]["reason"]
    assert {s.phase for s in report.samples if s.patient == "patient002"} == {"unknown"}


def test_folders_without_acdc_files(tmp_path):
    with pytest.raises(DataError, match="holds no patientNNN folder"):
        read_acdc(tmp_path)
    with pytest.raises(DataError, match="is not a folder"):
        read_acdc(tmp_path / "missing")
    assert not looks_like_acdc(tmp_path)
    (tmp_path / "patient001").mkdir()
    assert not looks_like_acdc(tmp_path)


def test_the_download_root_with_its_training_and_testing_sets(tmp_path):
    database = tmp_path / "ACDC" / "database"
    write_patient(database / "training", 1, {1: True, 12: True}, "ED: 1\nES: 12\n")
    write_patient(database / "testing", 101, {1: True, 9: True}, "ED: 1\nES: 9\n")
    for root in (tmp_path / "ACDC", database):
        assert looks_like_acdc(root)
        report = read_acdc(root)
        assert report.patients == ["patient001", "patient101"] and len(report.samples) == 2 * 2 * 4
    write_patient(database / "extra", 101, {1: True}, None)  # the same patient again: ambiguous
    with pytest.raises(DataError, match="patient patient101 was already read from"):
        read_acdc(database)


def test_looks_like_acdc(acdc):
    assert looks_like_acdc(acdc)
    assert looks_like_acdc(acdc / "patient001")
    assert not looks_like_acdc(acdc / "patient001" / "Info.cfg")


def test_other_layouts_do_not_look_like_acdc(shared_data):
    assert not looks_like_acdc(shared_data / "rvsc-train-png")
    assert not looks_like_acdc(shared_data / "rvsc-native")

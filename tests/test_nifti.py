"""NIfTI volumes: reading 2D to 4D images, slice positions, and masks saved in the source's geometry."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rvseg.data.nifti import (
    QFORM_NOTE,
    is_nifti,
    nifti_stem,
    read_nifti,
    save_like,
    single_slice_series,
    slice_locations,
)
from rvseg.errors import DataError


def save(path: Path, data: np.ndarray, affine: np.ndarray | None = None, slope: float | None = None) -> Path:
    image = nib.Nifti1Image(data, np.diag([1.2, 1.3, 8.0, 1.0]) if affine is None else affine)
    if slope is not None:
        image.header.set_slope_inter(slope, 10.0)
    nib.save(image, path)
    return path


def test_names():
    names = ("a.nii", "b.NII.GZ", "c.nii.gz.bak", "d.gz")
    assert [is_nifti(Path(name)) for name in names] == [True, True, False, False]
    assert nifti_stem(Path("patient001_4d.nii.gz")) == "patient001_4d"
    assert nifti_stem(Path("x.NII")) == "x" and nifti_stem(Path("y.png")) == "y"


def test_shapes_spacing_and_scaling(tmp_path):
    cine = read_nifti(save(tmp_path / "cine.nii.gz", np.arange(4 * 5 * 3 * 2, dtype=np.int16).reshape(4, 5, 3, 2)))
    assert cine.data.shape == (4, 5, 3, 2) and cine.n_frames == 2 and cine.spacing_mm == pytest.approx((1.2, 1.3))
    single = read_nifti(save(tmp_path / "one.nii", np.ones((4, 5), dtype=np.uint8)))
    assert single.data.shape == (4, 5, 1) and single.n_frames == 1
    trailing = read_nifti(save(tmp_path / "t.nii.gz", np.ones((4, 5, 3, 1), dtype=np.uint8)))
    assert trailing.data.shape == (4, 5, 3)
    scaled = read_nifti(save(tmp_path / "s.nii.gz", np.full((4, 5, 2), 3, dtype=np.int16), slope=2.0))
    assert scaled.data.dtype == np.float32 and np.all(scaled.data == 16.0)  # 2 x 3 + 10


def test_bad_files_are_one_clear_error(tmp_path):
    (tmp_path / "broken.nii.gz").write_bytes(b"not a volume")
    with pytest.raises(DataError, match="cannot be read as a NIfTI volume") as error:
        read_nifti(tmp_path / "broken.nii.gz")
    assert "broken.nii.gz" in str(error.value)
    with pytest.raises(DataError, match=r"not a 2D, 3D or 4D image \(shape \(4, 5, 3, 2, 2\)\)"):
        read_nifti(save(tmp_path / "five.nii.gz", np.zeros((4, 5, 3, 2, 2), dtype=np.uint8)))


@pytest.mark.parametrize("kind", [nib.Nifti1Image, nib.Nifti2Image])
def test_a_file_whose_compression_disagrees_with_its_suffix_is_read(tmp_path, kind):
    """A browser that unpacks a download on the fly leaves an uncompressed .nii.gz; the reverse happens too."""
    data = np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3)
    nib.save(kind(data, np.diag([1.2, 1.3, 8.0, 1.0])), tmp_path / "plain.nii")
    nib.save(kind(data, np.diag([1.2, 1.3, 8.0, 1.0])), tmp_path / "packed.nii.gz")
    (tmp_path / "plain.nii").rename(tmp_path / "unpacked.nii.gz")
    (tmp_path / "packed.nii.gz").rename(tmp_path / "packed.nii")
    for name in ("unpacked.nii.gz", "packed.nii"):
        volume = read_nifti(tmp_path / name)
        np.testing.assert_array_equal(volume.data, data)
        assert volume.spacing_mm == pytest.approx((1.2, 1.3))


def test_what_nibabel_logs_on_reading_is_a_note_not_stderr_output(tmp_path, capfd):
    path = save(tmp_path / "negative.nii", np.ones((4, 5, 3), dtype=np.int16))
    header = bytearray(path.read_bytes())
    header[80:84] = np.float32(-1.2).tobytes()  # pixdim[1] (NIfTI-1: pixdim at byte 76), negative as some tools write
    path.write_bytes(bytes(header))
    volume = read_nifti(path)
    assert volume.notes == [f"{path}: pixdim[1,2,3] should be positive; setting to abs of pixdim values"]
    assert volume.spacing_mm == pytest.approx((1.2, 1.3))
    assert capfd.readouterr().err == ""
    read_nifti(save(tmp_path / "plain.nii", np.ones((4, 5, 3), dtype=np.int16)))
    assert capfd.readouterr().err == ""


def test_slice_locations_along_the_normal():
    # Slices 8 mm apart along an oblique normal; the in-plane axes do not move a slice.
    rotation = np.array([[0.0, 0.6, 0.8], [1.0, 0.0, 0.0], [0.0, 0.8, -0.6]])
    affine = np.eye(4)
    affine[:3, :3] = rotation * [1.5, 1.5, 8.0]
    affine[:3, 3] = [5.0, -2.0, 3.0]
    locations = slice_locations(affine, 4)
    # normal = column 0 x column 1 = (0.8, 0, -0.6), the slice axis: the origin sits at 5 x 0.8 - 3 x 0.6.
    assert locations == pytest.approx([2.2, 10.2, 18.2, 26.2])


def test_masks_keep_the_geometry_and_header_but_not_the_scaling(tmp_path):
    affine = np.array([[0.0, 1.4, 0.0, 10.0], [1.4, 0.0, 0.0, -4.0], [0.0, 0.0, 9.0, 2.5], [0, 0, 0, 1]])
    image = nib.Nifti1Image(np.ones((6, 7, 3, 1), dtype=np.int16), affine)
    image.header.set_slope_inter(0.5, 10.0)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=2)
    image.header["descrip"] = b"PatientName=DOE^JOHN"
    image.header["db_name"] = b"DOE^JOHN"
    image.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"comment naming the patient"))
    nib.save(image, tmp_path / "image.nii.gz")
    source = read_nifti(tmp_path / "image.nii.gz")
    mask = np.zeros(source.data.shape, dtype=np.uint8)
    mask[1:3, 2:5, 1] = 1
    save_like(source, mask, tmp_path / "mask.nii.gz")
    saved = nib.load(tmp_path / "mask.nii.gz")
    assert saved.shape == (6, 7, 3, 1) and saved.get_data_dtype() == np.uint8
    assert np.allclose(saved.affine, affine) and saved.header.get_zooms()[:3] == source.image.header.get_zooms()[:3]
    assert (int(saved.header["qform_code"]), int(saved.header["sform_code"])) == (1, 2)
    assert np.allclose(saved.get_qform(), affine) and saved.header.get_xyzt_units() == image.header.get_xyzt_units()
    assert np.array_equal(saved.dataobj.get_unscaled()[..., 0], mask)  # the stored values themselves
    assert (float(saved.header["cal_min"]), float(saved.header["cal_max"])) == (0.0, 1.0)
    assert saved.header["descrip"].tobytes().rstrip(b"\0") == b"rvseg mask" and len(saved.header.extensions) == 0
    assert saved.header.get_intent()[0] == "label" and saved.header["db_name"].tobytes().strip(b"\0") == b""
    with pytest.raises(ValueError, match="shape"):
        save_like(source, mask[:, :, :2], tmp_path / "wrong.nii.gz")


def test_a_header_in_metres_is_read_in_mm_and_masks_keep_its_units(tmp_path):
    image = nib.Nifti1Image(np.ones((4, 5, 3), dtype=np.int16), np.diag([0.0012, 0.0013, 0.008, 1.0]))
    image.header.set_xyzt_units("meter")
    nib.save(image, tmp_path / "m.nii.gz")
    volume = read_nifti(tmp_path / "m.nii.gz")
    assert volume.spacing_mm == pytest.approx((1.2, 1.3)) and volume.zooms[2] == pytest.approx(8.0)
    assert np.diff(slice_locations(volume.affine, 3)) == pytest.approx([8.0, 8.0])
    save_like(volume, np.zeros(volume.data.shape, dtype=np.uint8), tmp_path / "mask.nii.gz")
    saved = nib.load(tmp_path / "mask.nii.gz")
    assert np.allclose(saved.affine, image.affine) and saved.header.get_xyzt_units()[0] == "meter"


def test_non_finite_voxels_become_the_lowest_value_with_a_note(tmp_path):
    data = np.arange(4 * 5 * 2, dtype=np.float32).reshape(4, 5, 2) + 3
    data[0, 0, 0], data[1, 1, 1] = np.nan, np.inf
    volume = read_nifti(save(tmp_path / "nan.nii.gz", data))
    assert volume.data[0, 0, 0] == volume.data[1, 1, 1] == 4.0  # the lowest finite value (3 was the NaN)
    assert volume.notes == [f"{tmp_path / 'nan.nii.gz'}: 2 non-finite voxel(s) set to the lowest finite value"]
    with pytest.raises(DataError, match="holds no finite voxel"):
        read_nifti(save(tmp_path / "all.nii.gz", np.full((4, 5, 2), np.nan, dtype=np.float32)))


def test_voxel_sizes_that_disagree_with_the_affine_are_noted(tmp_path):
    """Only an sform can disagree with pixdim: areas (pixdim) and slice positions (affine) then
    stand on different scales, which the user must hear about."""
    image = nib.Nifti1Image(np.ones((4, 5, 2), dtype=np.int16), np.diag([1.2, 1.3, 8.0, 1.0]))
    image.header.set_zooms((1.0, 1.0, 8.0))
    image.set_qform(None, code=0)  # no qform to fall back on
    nib.save(image, tmp_path / "odd.nii.gz")
    volume = read_nifti(tmp_path / "odd.nii.gz")
    assert volume.spacing_mm == pytest.approx((1.0, 1.0))
    assert volume.notes == [f"{tmp_path / 'odd.nii.gz'}: the header's voxel sizes (1 x 1 x 8 mm) differ from the "
                            "affine's (1.2 x 1.3 x 8 mm); pixel areas use the voxel sizes, slice positions the affine"]
    assert read_nifti(save(tmp_path / "fine.nii.gz", np.ones((4, 5, 2), dtype=np.int16))).notes == []


def test_an_sform_of_unit_scales_beside_an_agreeing_qform_gives_way_to_the_qform(tmp_path):
    """The ACDC files' headers (nnU-Net issue #2741): sform diag(-1, -1, 1), qform diag(-1.316, -1.316,
    10), both coded. Placed by the sform, slices would be 1 mm apart and volumes ten times too small."""
    image = nib.Nifti1Image(np.ones((4, 5, 3), dtype=np.int16), None)
    image.set_qform(np.diag([-1.31579, -1.31579, 10.0, 1.0]), code=1)
    image.set_sform(np.diag([-1.0, -1.0, 1.0, 1.0]), code=1)
    nib.save(image, tmp_path / "acdc.nii.gz")
    assert nib.load(tmp_path / "acdc.nii.gz").affine[2, 2] == 1.0  # what nibabel takes: the sform
    volume = read_nifti(tmp_path / "acdc.nii.gz")
    assert slice_locations(volume.affine, 3) == pytest.approx([0.0, 10.0, 20.0])
    assert volume.spacing_mm == pytest.approx((1.31579, 1.31579))
    assert volume.notes == [QFORM_NOTE]


@pytest.mark.parametrize("sform, where", [
    (np.diag([1.5, 1.5, 10.0, 1.0]), [0.0, 10.0, 20.0]),  # slices 10 mm apart, pixdim holding the 8 mm thickness
    (np.diag([1.0, 1.0, 1.0, 1.0]) @ np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1.0]]),
     [0.0, 1.0, 2.0]),  # unit scales, but another orientation than the qform's: not ACDC's defect
])
def test_other_sforms_that_disagree_with_pixdim_are_kept_with_a_note(tmp_path, sform, where):
    image = nib.Nifti1Image(np.ones((4, 5, 3), dtype=np.int16), None)
    image.set_qform(np.diag([1.5, 1.5, 8.0, 1.0]), code=1)
    image.set_sform(sform, code=1)
    nib.save(image, tmp_path / "kept.nii.gz")
    volume = read_nifti(tmp_path / "kept.nii.gz")
    assert np.abs(np.diff(slice_locations(volume.affine, 3))) == pytest.approx(np.diff(where))
    assert QFORM_NOTE not in volume.notes and "differ from the affine's" in volume.notes[0]


def test_complex_values_and_an_affine_without_a_plane_are_refused(tmp_path):
    with pytest.raises(DataError, match="complex"):
        read_nifti(save(tmp_path / "c.nii.gz", np.ones((4, 5, 2), dtype=np.complex64)))
    flat = np.diag([1.0, 1.0, 8.0, 1.0])
    flat[:3, 1] = flat[:3, 0]  # both in-plane axes along x
    with pytest.raises(DataError, match="affine without an image plane"):
        read_nifti(save(tmp_path / "flat.nii.gz", np.ones((4, 5, 2), dtype=np.int16), flat))


def test_single_slice_files_join_only_when_evenly_spaced(tmp_path):
    def slice_file(name: str, position: float, folder: str = "sax", shape=(4, 5, 1, 3)) -> tuple[str, object]:
        affine = np.diag([1.2, 1.3, 8.0, 1.0])
        affine[2, 3] = position
        (tmp_path / folder).mkdir(exist_ok=True)
        return name, read_nifti(save(tmp_path / folder / f"{name}.nii.gz", np.ones(shape, dtype=np.int16), affine))

    volumes = dict([slice_file("c", 16.0), slice_file("a", 0.0), slice_file("b", 8.0), slice_file("d", 0.0, "other"),
                    slice_file("e", 24.0, shape=(4, 5, 1, 2))])
    series, notes = single_slice_series(volumes)
    assert series == [["a", "b", "c"]]  # "d": another folder; "e": another number of frames
    assert notes == [f"{tmp_path / 'sax'}: 3 single-slice images joined into one stack, 8.00 mm apart (a ... c)"]
    uneven = dict([slice_file("a", 0.0), slice_file("b", 8.0), slice_file("c", 30.0)])
    assert single_slice_series(uneven) == ([], [f"{tmp_path / 'sax'}: 3 single-slice images of one plane not joined "
                                                "into a stack: their positions repeat or are unevenly spaced"])
    repeated = dict([slice_file("a", 0.0), slice_file("b", 0.0)])
    assert single_slice_series(repeated)[0] == []

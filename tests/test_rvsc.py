"""RVSC native reader and DICOM reading, on the real patient09 data and on broken copies of it."""

from __future__ import annotations

import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pydicom
import pytest
from helpers import compress_dicom, crop_dicom, make_patient_copy

from rvseg.data.contours import polygon_area, read_contour_file
from rvseg.data.dicom import (
    DicomImage,
    dicom_stacks,
    is_dicom,
    order_series,
    plane_positions,
    read_dicom,
    read_dicom_header,
)
from rvseg.data.rvsc import looks_like_rvsc, read_rvsc
from rvseg.errors import DataError

ANNOTATED = ("0020", "0022", "0023")


@pytest.fixture(scope="module")
def rvsc_root(shared_data) -> Path:
    return shared_data / "rvsc-native"


@pytest.fixture(scope="module")
def report(rvsc_root):
    return read_rvsc(rvsc_root)


def raised_message(root: Path, **kwargs) -> str:
    with pytest.raises(DataError) as raised:
        read_rvsc(root, **kwargs)
    return str(raised.value)


# --- the real patient09 -------------------------------------------------------------------------


def test_patient09_samples_and_phases(report):
    assert report.format == "rvsc"
    assert report.labels == ("endo", "epi")
    assert [(s.id, s.phase, s.frame) for s in report.samples] == [
        ("P09-0020", "ED", 20),
        ("P09-0022", "ED", 22),
        ("P09-0023", "ES", 23),
    ]
    assert report.patients == ["P09"]
    assert [s.slice for s in report.samples] == ["30.85", "39.25", "39.25"]
    assert report.notes == [] and report.skipped == [] and report.unmatched_contours == []


def test_patient09_unmatched_images(report, rvsc_root):
    assert len(report.unmatched_images) == 21
    expected = {f"P09-{frame:04d}.dcm" for frame in range(24)} - {f"P09-{f}.dcm" for f in ANNOTATED}
    assert {Path(path).name for path in report.unmatched_images} == expected


def test_patient09_geometry(report):
    for sample in report.samples:
        assert sample.image.shape == (256, 216)
        assert sample.image.dtype == np.float32
        assert sample.spacing_mm == pytest.approx((0.7014, 0.7014), abs=1e-4)
        assert sample.slice_thickness_mm == pytest.approx(7.0)
        assert set(sample.masks) == {"endo", "epi"}
        assert all(mask.dtype == bool and mask.shape == (256, 216) for mask in sample.masks.values())
    assert report.samples[0].slice_location == pytest.approx(30.8514, abs=1e-3)


def test_patient09_masks_match_polygon_areas(report):
    sample = report.samples[0]
    endo_polygon = read_contour_file(sample.sources["endo"])
    epi_polygon = read_contour_file(sample.sources["epi"])
    assert polygon_area(endo_polygon) == pytest.approx(7106.5, abs=0.1)
    assert polygon_area(epi_polygon) == pytest.approx(8767.7, abs=0.1)
    assert np.count_nonzero(sample.masks["endo"]) == pytest.approx(7106.5, rel=0.01)
    assert np.count_nonzero(sample.masks["epi"]) == pytest.approx(8767.7, rel=0.01)


def test_patient09_epi_contains_endo(report):
    # Measured on the real data: 0 endo pixels outside epi in all three samples.
    for sample in report.samples:
        outside = np.count_nonzero(sample.masks["endo"] & ~sample.masks["epi"])
        assert outside <= 5, sample.id
        assert np.count_nonzero(sample.masks["epi"]) > np.count_nonzero(sample.masks["endo"])


def test_cavity_lies_on_the_image_where_the_contour_is(report):
    # Orientation check: x is the column. The contour's centroid must fall inside the filled mask.
    sample = report.samples[0]
    x, y = read_contour_file(sample.sources["endo"]).mean(axis=0)
    assert sample.masks["endo"][round(y), round(x)]


def test_one_patient_folder_reads_the_same(report, rvsc_root):
    single = read_rvsc(rvsc_root / "patient09")
    assert [s.id for s in single.samples] == [s.id for s in report.samples]
    assert np.array_equal(single.samples[2].masks["endo"], report.samples[2].masks["endo"])


def test_looks_like_rvsc(rvsc_root, shared_data, tmp_path):
    assert looks_like_rvsc(rvsc_root)
    assert looks_like_rvsc(rvsc_root / "patient09")
    assert not looks_like_rvsc(shared_data / "sunnybrook-subset")
    assert not looks_like_rvsc(tmp_path)
    assert not looks_like_rvsc(tmp_path / "missing")


# --- DICOM reading ------------------------------------------------------------------------------


def test_read_dicom_metadata(rvsc_root):
    image = read_dicom(rvsc_root / "patient09" / "P09dicom" / "P09-0023.dcm")
    assert image.pixels.shape == (256, 216) and image.pixels.dtype == np.float32
    assert image.trigger_time == 322.0
    assert image.instance_number == 48
    assert image.slice_location == pytest.approx(39.2514, abs=1e-3)
    assert image.series_uid.startswith("1.3.12.2.1107.5.2.33.37040")
    assert image.pixels.max() > image.pixels.min() >= 0


#: CardiacNumberOfImages (0018,1090) as stored in P09's explicit-VR files: tag, VR IS, length 2, "20".
CARDIAC_IMAGES_ELEMENT = b"\x18\x00\x90\x10IS\x02\x0020"


@pytest.mark.parametrize(("value", "expected"), [(b"20", 20), (b"30", 30), (b"ab", None), (b"-3", None)])
def test_cardiac_number_of_images_is_a_hint_never_a_reason_to_reject(tmp_path, rvsc_root, value, expected):
    original = (rvsc_root / "patient09" / "P09dicom" / "P09-0023.dcm").read_bytes()
    assert original.count(CARDIAC_IMAGES_ELEMENT) == 1
    path = tmp_path / "frame.dcm"
    path.write_bytes(original.replace(CARDIAC_IMAGES_ELEMENT, CARDIAC_IMAGES_ELEMENT[:-2] + value))  # as scanners write
    assert read_dicom(path).cardiac_images == expected


def with_raw_value(source: Path, keyword: str, value: bytes, path: Path) -> Path:
    """``source`` with ``keyword`` holding ``value`` as stored bytes, unchecked (as a corrupt header may)."""
    from pydicom.datadict import dictionary_VR
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    dataset = pydicom.dcmread(source)
    tag = Tag(keyword)
    value += b" " * (len(value) % 2)
    dataset[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, False, True)
    dataset.save_as(path)
    return path


def test_an_integer_tag_too_large_for_pydicom_is_a_malformed_value_not_a_crash(tmp_path, rvsc_root):
    """pydicom converts an IS of 1e999 to float infinity, then fails to make it an int (OverflowError)."""
    source = rvsc_root / "patient09" / "P09dicom" / "P09-0023.dcm"
    hints = with_raw_value(source, "SeriesNumber", b"1e999", tmp_path / "series.dcm")
    assert read_dicom(hints).series_number is None  # a hint: ignored, as any malformed hint
    assert read_dicom_header(hints).series_number is None
    hints = with_raw_value(source, "CardiacNumberOfImages", b"-1e999", tmp_path / "cardiac.dcm")
    assert read_dicom(hints).cardiac_images is None
    needed = with_raw_value(source, "InstanceNumber", b"1e999", tmp_path / "instance.dcm")
    with pytest.raises(DataError, match="InstanceNumber holds '1e999', not an integer"):
        read_dicom(needed)


def test_read_dicom_applies_rescale_and_derives_slice_location(tmp_path, rvsc_root):
    source = rvsc_root / "patient09" / "P09dicom" / "P09-0023.dcm"
    original = read_dicom(source)
    dataset = pydicom.dcmread(source)
    dataset.RescaleSlope = 2
    dataset.RescaleIntercept = -100
    del dataset.SliceLocation
    path = tmp_path / "rescaled.dcm"
    dataset.save_as(path)
    image = read_dicom(path)
    assert np.array_equal(image.pixels, original.pixels * 2 - 100)
    # Projection of ImagePositionPatient on the slice normal, computed by hand from the header.
    orientation = np.array([float(v) for v in dataset.ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    position = np.array([float(v) for v in dataset.ImagePositionPatient])
    assert image.slice_location == pytest.approx(float(position @ normal / np.linalg.norm(normal)))
    assert image.slice_location != pytest.approx(original.slice_location)
    assert read_dicom_header(path).slice_location == image.slice_location


def test_a_header_read_gives_what_the_full_read_gives_without_the_pixels(rvsc_root, tmp_path):
    """The RVSC reader orders a cine by the headers of its frames and decodes only the contoured ones."""
    for path in sorted((rvsc_root / "patient09" / "P09dicom").glob("*.dcm")):
        image, header = read_dicom(path), read_dicom_header(path)
        assert (header.shape, header.trigger_time, header.slice_location) == (
            image.shape, image.trigger_time, image.slice_location)
    dataset = pydicom.dcmread(rvsc_root / "patient09" / "P09dicom" / "P09-0000.dcm")
    del dataset.Rows
    dataset.save_as(tmp_path / "no-size.dcm")
    with pytest.raises(DataError, match="gives no image size"):
        read_dicom_header(tmp_path / "no-size.dcm")
    # A deflated file is smaller than its pixel data: its length is read from the inflated stream.
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    deflated = pydicom.dcmread(rvsc_root / "patient09" / "P09dicom" / "P09-0001.dcm")
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    assert (tmp_path / "deflated.dcm").stat().st_size < 256 * 216 * 2
    assert read_dicom_header(tmp_path / "deflated.dcm").shape == (256, 216)
    # What decoding would find is found without it: pixel data cut short, or none at all.
    whole = (rvsc_root / "patient09" / "P09dicom" / "P09-0001.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(whole[:-5000])
    with pytest.raises(DataError, match="holds 105592 of the 110592 bytes of a 256 x 216 image"):
        read_dicom_header(tmp_path / "cut.dcm")
    with pytest.raises(DataError, match="cannot decode the DICOM pixel data"):
        read_dicom(tmp_path / "cut.dcm")
    del dataset.PixelData
    dataset.Rows = 256
    dataset.save_as(tmp_path / "no-pixels.dcm")
    with pytest.raises(DataError, match="holds no pixel data"):
        read_dicom_header(tmp_path / "no-pixels.dcm")


def test_order_series(rvsc_root):
    paths = sorted((rvsc_root / "patient09" / "P09dicom").glob("*.dcm"), reverse=True)
    ordered = order_series(read_dicom(path) for path in paths[:6])  # frames 0018-0023
    assert [image.path.stem for image in ordered] == [
        "P09-0018", "P09-0019", "P09-0020", "P09-0021", "P09-0022", "P09-0023",
    ]


def header_only(series: str, location: float, time: float, normal=(0.0, 0.0, 1.0), study: str = "S1",
                shape=(8, 6), thickness: float | None = None, number: int | None = None) -> DicomImage:
    """A DicomImage with only what stacking looks at (no file behind it)."""
    return DicomImage(pixels=np.zeros(shape, np.float32), spacing_mm=(1.0, 1.0), trigger_time=time,
                      slice_location=location, slice_thickness_mm=thickness, instance_number=None, series_uid=series,
                      path=Path(f"{series}-{location}-{time}.dcm"), study_uid=study, normal=normal,
                      position=None if normal is None else tuple(location * np.asarray(normal)), series_number=number)


def test_single_slice_series_of_a_study_form_one_stack():
    # A short-axis cine stored one series per slice (as many scanners do), given in no particular order.
    cine = [header_only(f"sax{k}", location, time) for k, location in enumerate((20.0, 0.0, 10.0))
            for time in (300.0, 0.0)]
    tilted = (0.0, np.sin(np.radians(0.5)), np.cos(np.radians(0.5)))  # within the 1 degree tolerance
    cine += [header_only("sax3", 30.0, time, normal=tilted) for time in (0.0, 300.0)]
    others = [
        *[header_only("4ch", 5.0, time, normal=(1.0, 0.0, 0.0)) for time in (0.0, 300.0)],  # a long-axis view
        *[header_only("repeat", 10.0, time) for time in (0.0, 300.0)],  # a slice already in the stack
        *[header_only("lge", location, 0.0) for location in (0.0, 10.0)],  # a multi-slice series
        header_only("single", 40.0, 0.0),  # one frame, not two: not the cine's, but continues the LGE stack
        *[header_only("other-study", 40.0, time, study="S2") for time in (0.0, 300.0)],
        *[header_only("small", 40.0, time, shape=(4, 6)) for time in (0.0, 300.0)],
    ]
    stacks = dicom_stacks(cine + others)
    assert [[(image.slice_location, image.trigger_time) for image in stack] for stack in stacks][0] == [
        (0.0, 0.0), (0.0, 300.0), (10.0, 0.0), (10.0, 300.0), (20.0, 0.0), (20.0, 300.0), (30.0, 0.0), (30.0, 300.0)
    ]
    assert [sorted({image.series_uid for image in stack}) for stack in stacks[1:]] == [
        ["4ch"], ["repeat"], ["lge", "single"], ["other-study"], ["small"]
    ]


def cine_series(series: str, locations, times=(0.0, 100.0, 200.0, 300.0, 400.0), normal=(0.0, 0.0, 1.0),
                thickness: float = 8.0, number: int | None = None):
    """A cine of ``thickness`` mm thick slices (SliceThickness), ``times`` the frames' trigger times,
    ``number`` its SeriesNumber."""
    return [header_only(series, location, time, normal=normal, thickness=thickness, number=number)
            for location in locations for time in times]


def stack_series(stacks) -> list[list[str]]:
    return [sorted({image.series_uid for image in stack}) for stack in stacks]


def test_a_series_in_several_planes_makes_one_stack_per_plane():
    """A localiser (three planes) or a long-axis image stored in the short-axis series never adds a
    slice to a volume: positions along one normal mean nothing for another plane."""
    images = cine_series("sax", (0.0, 10.0, 20.0)) + cine_series("sax", (5.0,), normal=(1.0, 0.0, 0.0))
    stacks = dicom_stacks(images)
    assert [len(stack) for stack in stacks] == [15, 5]
    assert {tuple(image.normal) for image in stacks[1]} == {(1.0, 0.0, 0.0)}
    localiser = [header_only("loc", 0.0, 0.0, normal=normal) for normal in ((1.0, 0, 0), (0, 1.0, 0), (0, 0, 1.0))]
    assert [len(stack) for stack in dicom_stacks(localiser)] == [1, 1, 1]


def test_breath_hold_series_of_several_slices_join_in_any_order_but_not_interleaved():
    breath_holds = cine_series("bh2", (30.0, 40.0)) + cine_series("bh1", (0.0, 10.0, 20.0))
    (stack,) = dicom_stacks(breath_holds)
    assert sorted({image.slice_location for image in stack}) == [0.0, 10.0, 20.0, 30.0, 40.0]
    out_of_order = cine_series("bh1", (0.0, 10.0, 20.0)) + cine_series("bh3", (60.0, 70.0)) + cine_series(
        "bh2", (30.0, 40.0, 50.0))
    assert stack_series(dicom_stacks(out_of_order)) == [["bh1", "bh2", "bh3"]]
    repeat = cine_series("first", (0.0, 10.0, 20.0)) + cine_series("second", (5.0, 15.0, 25.0))
    assert stack_series(dicom_stacks(repeat)) == [["first"], ["second"]]


def test_a_repeated_or_shifted_slice_series_stays_apart_from_the_cine():
    """Half a slice step (8 mm thick slices) from the cine's slices: a second measurement of the heart,
    which would halve the stack's spacing and distort its volume."""
    cine = cine_series("sax", [10.0 * k for k in range(10)])
    for series, location in (("repeat", 45.0), ("near", 42.0), ("past-end", 90.5)):
        assert stack_series(dicom_stacks(cine + cine_series(series, (location,)))) == [["sax"], [series]]
    second = [image for k in range(10) for image in cine_series(f"b{k}", (5.0 + 10.0 * k,))]
    stacks = dicom_stacks([image for pair in zip(cine, second, strict=True) for image in pair])
    assert [len(stack) for stack in stacks] == [50, 50]
    tagged = cine_series("tag", (100.0,), times=(0.0, 150.0, 300.0))  # another acquisition: 3 frames, not 5
    assert stack_series(dicom_stacks(cine + tagged)) == [["sax"], ["tag"]]


def test_slice_per_series_cines_join_whatever_the_file_order_or_frame_counts():
    times = [tuple(40.0 * k for k in range(count)) for count in (18, 20, 16)]
    prospective = [image for k in range(9) for image in cine_series(f"s{k}", (10.0 * k,), times=times[k % 3])]
    assert len(dicom_stacks(prospective)) == 1  # 16 to 20 frames per slice, as the heart rate varied
    singles = [cine_series(f"s{k}", (10.0 * k,)) for k in range(10)]
    repeat = cine_series("repeat", (45.0,))
    for files in ([*singles[:4], repeat, *singles[4:]], [repeat, *singles], [*singles, repeat]):
        stacks = dicom_stacks([image for series in files for image in series])
        assert sorted(len(stack) for stack in stacks) == [5, 50]  # the repeat alone, in any file order
    # Thin slices (6 mm every 10 mm): a repeat half a step off is still no slice of the cine.
    thin = [cine_series(f"t{k}", (10.0 * k,), thickness=6.0) for k in range(10)]
    stacks = dicom_stacks([image for series in [cine_series("r", (45.0,), thickness=6.0), *thin] for image in series])
    assert sorted(len(stack) for stack in stacks) == [5, 50]
    # A repeat just beyond the base, acquired later (a higher SeriesNumber), leaves the base in the cine.
    numbered = [cine_series(f"n{k}", (10.0 * k,), number=k + 1) for k in range(10)]
    beyond = cine_series("late", (-5.0,), number=20)
    alone, cine = sorted(dicom_stacks([image for series in [beyond, *numbered] for image in series]), key=len)
    assert {image.series_uid for image in alone} == {"late"} and len(cine) == 50


def test_a_slice_series_that_lost_a_frame_still_joins_the_cine():
    images = cine_series("s0", (0.0,)) + cine_series("s1", (10.0,))[1:] + cine_series("s2", (20.0,))
    assert stack_series(dicom_stacks(images)) == [["s0", "s1", "s2"]]
    one_frame = cine_series("s0", (0.0,)) + [header_only("s1", 10.0, 0.0)]
    assert stack_series(dicom_stacks(one_frame)) == [["s0"], ["s1"]]


def test_a_cine_exported_one_image_per_series_is_one_stack():
    """Every image its own series (some exports and anonymisers): the images of one plane at distinct
    trigger times are that slice's frames, whatever the series numbering, and the slices then join."""
    times = (0.0, 100.0, 200.0, 300.0)
    locations = (0.0, 10.0, 20.0)
    frame_major = [header_only(f"u{k}", location, time, number=k + 1)
                   for k, (time, location) in enumerate((t, loc) for t in times for loc in locations)]
    for images in (frame_major, frame_major[::-1]):
        (stack,) = dicom_stacks(images)
        assert [(image.slice_location, image.trigger_time) for image in stack] == [
            (location, time) for location in locations for time in times]
    # One image per series at the same trigger time is no cine: each stays a stack of its own.
    same_time = [header_only(f"r{k}", 0.0, 0.0) for k in range(3)]
    assert len(dicom_stacks(same_time)) == 3


def test_plane_positions_measure_along_the_normal(rvsc_root):
    folder = rvsc_root / "patient09" / "P09dicom"
    images = [read_dicom(folder / f"P09-{frame}.dcm") for frame in ("0000", "0020", "0022")]
    positions = plane_positions(images)
    # Siemens writes SliceLocation along the normal too (with the opposite sign here): the same spacings.
    assert np.diff(positions) == pytest.approx(-np.diff([image.slice_location for image in images]), abs=1e-6)
    assert np.diff(positions) == pytest.approx([-8.4, -8.4], abs=1e-3)
    assert plane_positions([header_only("a", 0.0, 0.0, normal=None)]) is None


def test_is_dicom(rvsc_root, tmp_path):
    assert is_dicom(rvsc_root / "patient09" / "P09dicom" / "P09-0000.dcm")
    assert not is_dicom(rvsc_root / "patient09" / "P09list.txt")
    assert not is_dicom(tmp_path / "missing.dcm")


# --- broken copies ------------------------------------------------------------------------------


def test_copy_reads_like_the_original(tmp_path, rvsc_root):
    report = read_rvsc(make_patient_copy(tmp_path, rvsc_root))
    assert [(s.id, s.phase) for s in report.samples] == [("P09-0020", "ED"), ("P09-0022", "ED"), ("P09-0023", "ES")]
    assert [Path(p).name for p in report.unmatched_images] == ["P09-0021.dcm"]


def test_corrupt_dicom(tmp_path, rvsc_root):
    root = make_patient_copy(tmp_path, rvsc_root)
    path = root / "patient09" / "P09dicom" / "P09-0022.dcm"
    path.write_bytes(path.read_bytes()[:60000])
    message = raised_message(root)
    assert str(path) in message
    assert "cannot decode the DICOM pixel data" in message


def test_not_a_dicom_file(tmp_path, rvsc_root):
    root = make_patient_copy(tmp_path, rvsc_root)
    path = root / "patient09" / "P09dicom" / "P09-0021.dcm"
    path.write_text("this is not DICOM\n" * 20)
    message = raised_message(root)
    assert str(path) in message and "not a DICOM file" in message


def test_dicom_files_without_preamble_read_as_with_it(tmp_path, rvsc_root, report):
    """Old archives and some tools write a bare data set: no preamble, no DICM, no file meta group. The
    files then name no transfer syntax, and the reader takes the one pydicom read them in."""
    root = make_patient_copy(tmp_path, rvsc_root, frames=[f"{frame:04d}" for frame in range(24)])
    for index, path in enumerate(sorted((root / "patient09" / "P09dicom").glob("*.dcm"))):
        dataset = pydicom.dcmread(path)
        del dataset.file_meta
        dataset.preamble = None
        pydicom.dcmwrite(path, dataset, implicit_vr=index % 2 == 0, little_endian=True, enforce_file_format=False)
        assert path.read_bytes()[:4] == b"\x08\x00\x05\x00"  # (0008,0005) SpecificCharacterSet, no preamble
    bare = read_rvsc(root)
    assert [(s.id, s.phase, s.slice) for s in bare.samples] == [(s.id, s.phase, s.slice) for s in report.samples]
    for read, expected in zip(bare.samples, report.samples, strict=True):
        assert np.array_equal(read.image, expected.image)
        assert read.spacing_mm == expected.spacing_mm and read.slice_location == expected.slice_location
    one = root / "patient09" / "P09dicom" / "P09-0023.dcm"
    assert is_dicom(one) and read_dicom_header(one).shape == (256, 216)


def test_only_dicom_data_sets_are_taken_for_bare_dicom(tmp_path, rvsc_root):
    frame = rvsc_root / "patient09" / "P09dicom" / "P09-0023.dcm"
    iio.imwrite(tmp_path / "image.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "notes.txt").write_text("(0008,0005) and other tags\n")
    (tmp_path / "short").write_bytes(b"\x08\x00")
    (tmp_path / "part10.dcm").write_bytes(frame.read_bytes())
    # A first element longer than the file: no data set.
    (tmp_path / "overrun").write_bytes(b"\x08\x00\x16\x00UI\xff\x7f" + b"1.2" * 10)
    # Raw uint16 pixel dumps (Philips .REC, Analyze .img) whose first value is a group a data set starts with.
    rng = np.random.default_rng(1)
    for first in (2, 8):
        pixels = rng.integers(0, 60, (256, 256)).astype("<u2")
        pixels.flat[0] = first
        (tmp_path / f"scan{first}.rec").write_bytes(pixels.tobytes())
    names = ("image.png", "notes.txt", "short", "part10.dcm", "overrun", "scan2.rec", "scan8.rec")
    assert [is_dicom(tmp_path / name) for name in names] == [False, False, False, True, False, False, False]
    with pytest.raises(DataError, match="not a DICOM file"):
        read_dicom(tmp_path / "notes.txt")
    # A bare data set cut inside its pixel data is a damaged DICOM file, not something else.
    dataset = pydicom.dcmread(frame)
    del dataset.file_meta
    dataset.preamble = None
    pydicom.dcmwrite(tmp_path / "bare", dataset, implicit_vr=True, enforce_file_format=False)
    (tmp_path / "cut").write_bytes((tmp_path / "bare").read_bytes()[:-20000])
    assert is_dicom(tmp_path / "cut")
    with pytest.raises(DataError, match="cannot decode the DICOM pixel data"):
        read_dicom(tmp_path / "cut")


def test_dicom_without_pixel_data(tmp_path, rvsc_root):
    root = make_patient_copy(tmp_path, rvsc_root)
    path = root / "patient09" / "P09dicom" / "P09-0020.dcm"
    dataset = pydicom.dcmread(path)
    del dataset.PixelData
    dataset.save_as(path)
    message = raised_message(root)
    assert str(path) in message and "holds no pixel data" in message


@pytest.mark.parametrize(
    ("extra_line", "problem"),
    [
        ("12.5 abc", "is malformed"),
        ("nan 40.0", "non-finite coordinate"),
        ("400.0 900.0", "1 contour point(s) lie outside the 256 x 216 image"),
    ],
)
def test_bad_contour_line(tmp_path, rvsc_root, extra_line, problem):
    root = make_patient_copy(tmp_path, rvsc_root)
    path = root / "patient09" / "P09contours-manual" / "P09-0022-ocontour-manual.txt"
    path.write_text(path.read_text() + extra_line + "\n")
    message = raised_message(root)
    assert str(path) in message and problem in message


def test_contour_with_too_few_points(tmp_path, rvsc_root):
    root = make_patient_copy(tmp_path, rvsc_root)
    path = root / "patient09" / "P09contours-manual" / "P09-0020-icontour-manual.txt"
    path.write_text("100.0 60.0\n101.0 61.0\n")
    message = raised_message(root)
    assert str(path) in message and "at least 3 points, this file has 2" in message


@pytest.mark.parametrize(
    "entry",
    [r".\patient09\..\..\outside\P09-0020-icontour-manual.txt", r"C:\data\P09-0020-icontour-manual.txt", "/etc/passwd"],
)
def test_list_entry_escaping_the_patient_folder(tmp_path, rvsc_root, entry):
    root = make_patient_copy(tmp_path, rvsc_root)
    list_file = root / "patient09" / "P09list.txt"
    list_file.write_text(list_file.read_text() + entry + "\r\n")
    message = raised_message(root)
    assert message.startswith(f"{list_file}: line 7: ")
    assert "points outside the patient folder" in message


def test_listed_contour_missing(tmp_path, rvsc_root):
    root = make_patient_copy(tmp_path, rvsc_root)
    (root / "patient09" / "P09contours-manual" / "P09-0023-ocontour-manual.txt").unlink()
    list_file = root / "patient09" / "P09list.txt"
    message = raised_message(root)
    assert message.startswith(f"{list_file}: line 6: ")
    assert "P09-0023-ocontour-manual.txt" in message and "does not exist" in message


def test_a_list_of_bare_file_names_names_the_contour_folder(tmp_path, rvsc_root):
    root = make_patient_copy(tmp_path, rvsc_root)
    list_file = root / "patient09" / "P09list.txt"
    list_file.write_text("".join(line.rsplit("\\", 1)[-1] + "\r\n" for line in list_file.read_text().splitlines()))
    assert [s.id for s in read_rvsc(root).samples] == ["P09-" + frame for frame in ANNOTATED]


def test_a_patient_without_contours_or_list_is_noted(tmp_path, rvsc_root):
    root = make_patient_copy(tmp_path, rvsc_root)
    shutil.rmtree(root / "patient09" / "P09contours-manual")
    (root / "patient09" / "P09list.txt").unlink()
    report = read_rvsc(root, skip_bad=True)
    assert report.samples == [] and len(report.unmatched_images) == 4
    assert len(report.notes) == 1 and "P09: no contour files and no P09list.txt" in report.notes[0]
    assert str(root / "patient09" / "P09contours-manual") in report.notes[0]
    assert str(root.parent / "dataContours" / "P09contours-manual") in report.notes[0]  # a test set's tree


def test_mixed_image_sizes(tmp_path, rvsc_root):
    root = make_patient_copy(tmp_path, rvsc_root)
    path = root / "patient09" / "P09dicom" / "P09-0021.dcm"
    crop_dicom(path, 128, 108)
    message = raised_message(root)
    assert str(path) in message
    assert "image is 128 x 108 but the other images of patient P09 are 256 x 216" in message


def test_empty_folder(tmp_path):
    message = raised_message(tmp_path)
    assert str(tmp_path) in message and "no RVSC patient found" in message and "patientNN" in message


def test_patient_folder_without_dicoms(tmp_path):
    (tmp_path / "patient03" / "P03dicom").mkdir(parents=True)
    message = raised_message(tmp_path)
    assert str(tmp_path / "patient03" / "P03dicom") in message and "no DICOM frames" in message


def test_skip_bad_records_a_corrupt_dicom_and_keeps_the_rest(tmp_path, rvsc_root):
    root = make_patient_copy(tmp_path, rvsc_root)
    bad = root / "patient09" / "P09dicom" / "P09-0023.dcm"
    bad.write_bytes(bad.read_bytes()[:60000])
    report = read_rvsc(root, skip_bad=True)
    assert [s.id for s in report.samples] == ["P09-0020", "P09-0022"]
    assert len(report.skipped) == 1
    assert report.skipped[0]["path"] == str(bad)
    assert "cannot decode the DICOM pixel data" in report.skipped[0]["reason"]
    assert report.notes == ["P09-0023: contours not used, the DICOM frame was skipped"]
    assert report.unmatched_contours == []


def test_skip_bad_contour_keeps_the_other_label(tmp_path, rvsc_root):
    root = make_patient_copy(tmp_path, rvsc_root)
    bad = root / "patient09" / "P09contours-manual" / "P09-0022-icontour-manual.txt"
    bad.write_text("1 2\n")
    report = read_rvsc(root, skip_bad=True)
    assert [(s.id, sorted(s.masks)) for s in report.samples] == [
        ("P09-0020", ["endo", "epi"]),
        ("P09-0022", ["epi"]),
        ("P09-0023", ["endo", "epi"]),
    ]
    assert report.skipped == [{"path": str(bad), "reason": "a contour needs at least 3 points, this file has 1"}]


def test_without_list_file_the_contour_folder_is_globbed(tmp_path, rvsc_root):
    root = make_patient_copy(tmp_path, rvsc_root)
    (root / "patient09" / "P09list.txt").unlink()
    (root / "patient09" / "P09contours-manual" / "P09-0022-icontour-manual.txt").unlink()
    (root / "patient09" / "P09dicom" / "P09-0023.dcm").unlink()
    report = read_rvsc(root)
    assert [(s.id, sorted(s.masks)) for s in report.samples] == [("P09-0020", ["endo", "epi"]), ("P09-0022", ["epi"])]
    assert report.notes == ["P09-0022: no i-contour file; the sample has only 'epi'"]
    assert sorted(Path(p).name for p in report.unmatched_contours) == [
        "P09-0023-icontour-manual.txt",
        "P09-0023-ocontour-manual.txt",
    ]


def test_phase_unknown_without_the_rest_of_the_slice(tmp_path, rvsc_root):
    # Frame 0023 (TriggerTime 322) alone in its slice: nothing proves it is not the first frame.
    # Frame 0020 alone is still ED: TriggerTime 0 is the R wave.
    report = read_rvsc(make_patient_copy(tmp_path, rvsc_root, frames=("0020", "0023")))
    assert [(s.id, s.phase) for s in report.samples] == [("P09-0020", "ED"), ("P09-0023", "unknown")]


def test_list_file_with_a_byte_order_mark(tmp_path, rvsc_root):
    # Windows editors may save the list (CRLF line ends, backslashes) with a UTF-8 byte-order mark.
    root = make_patient_copy(tmp_path, rvsc_root)
    list_file = root / "patient09" / "P09list.txt"
    assert b"\r\n" in list_file.read_bytes()
    list_file.write_bytes(b"\xef\xbb\xbf" + list_file.read_bytes())
    report = read_rvsc(root)
    assert [s.id for s in report.samples] == ["P09-" + frame for frame in ANNOTATED]
    assert not report.notes and not report.skipped


def test_unlisted_contour_files_are_noted(tmp_path, rvsc_root):
    root = make_patient_copy(tmp_path, rvsc_root)
    list_file = root / "patient09" / "P09list.txt"
    kept = [line for line in list_file.read_text().splitlines() if "0023" not in line]
    list_file.write_text("\r\n".join(kept) + "\r\n")
    report = read_rvsc(root)
    assert [s.id for s in report.samples] == ["P09-0020", "P09-0022"]
    assert len(report.notes) == 1 and "2 contour file(s)" in report.notes[0] and str(list_file) in report.notes[0]


# --- the test sets' separate contour tree -------------------------------------------------------


def make_test_set_copy(tmp_path: Path, rvsc_root: Path) -> Path:
    """patient09 laid out as an RVSC test-set patient: ``TestSet/Test1Set/patient09`` holds the DICOMs
    and the list file, ``TestSet/Test1SetContours/P09contours-manual`` the contours. Returns ``TestSet``."""
    data = make_patient_copy(tmp_path, rvsc_root, frames=ANNOTATED)
    test_set = tmp_path / "TestSet"
    (test_set / "Test1SetContours").mkdir(parents=True)
    (data / "patient09" / "P09contours-manual").rename(test_set / "Test1SetContours" / "P09contours-manual")
    data.rename(test_set / "Test1Set")
    return test_set


def test_test_set_contours_in_their_separate_tree(tmp_path, rvsc_root, report):
    test_set = make_test_set_copy(tmp_path, rvsc_root)
    assert looks_like_rvsc(test_set)
    for root in (test_set, test_set / "Test1Set", test_set / "Test1Set" / "patient09"):
        read = read_rvsc(root)
        assert [(s.id, s.phase) for s in read.samples] == [(s.id, s.phase) for s in report.samples]
        for got, want in zip(read.samples, report.samples, strict=True):
            assert all(np.array_equal(got.masks[k], want.masks[k]) for k in ("endo", "epi"))
        assert str(test_set / "Test1SetContours") in read.samples[0].sources["endo"]
    (test_set / "Test1Set" / "patient09" / "P09contours-manual").mkdir()  # empty, made before the release
    assert len(read_rvsc(test_set).samples) == len(report.samples)
    (test_set / "Test1Set" / "patient09" / "P09list.txt").unlink()  # globbed in the separate tree instead
    assert len(read_rvsc(test_set).samples) == len(report.samples)


def test_a_symlinked_patient_folder_is_read(tmp_path, rvsc_root, report):
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "patient09").symlink_to(rvsc_root / "patient09", target_is_directory=True)
    assert [s.id for s in read_rvsc(tmp_path / "set").samples] == [s.id for s in report.samples]


def test_a_patient_found_twice_is_refused(tmp_path, rvsc_root):
    test_set = make_test_set_copy(tmp_path, rvsc_root)
    shutil.copytree(test_set / "Test1Set", tmp_path / "TrainingSet")
    shutil.copytree(test_set / "Test1SetContours", tmp_path / "TrainingSetContours")
    message = raised_message(tmp_path)
    assert "patient P09 was already read from" in message
    assert len(read_rvsc(tmp_path, skip_bad=True).samples) == len(ANNOTATED)


# --- file names as exports write them -------------------------------------------------------------


def assert_every_annotated_frame_has_both_labels(report) -> None:
    assert [(s.id, sorted(s.masks)) for s in report.samples] == [(f"P09-{frame}", ["endo", "epi"])
                                                                   for frame in ANNOTATED]


def test_upper_case_names_are_read_like_lower_case_ones(tmp_path, rvsc_root):
    root = make_patient_copy(tmp_path, rvsc_root)
    patient = root / "patient09"
    (patient / "P09dicom" / "P09-0020.dcm").rename(patient / "P09dicom" / "P09-0020.DCM")
    (patient / "P09list.txt").unlink()
    contours = patient / "P09contours-manual"
    (contours / "P09-0022-icontour-manual.txt").rename(contours / "P09-0022-ICONTOUR-MANUAL.TXT")
    report = read_rvsc(root)
    assert_every_annotated_frame_has_both_labels(report)
    assert not report.notes and not report.unmatched_contours


def test_upper_case_folders_and_a_list_naming_files_in_another_case(tmp_path, rvsc_root):
    root = make_patient_copy(tmp_path, rvsc_root)
    patient = root / "patient09"
    (patient / "P09dicom").rename(patient / "P09DICOM")
    (patient / "P09contours-manual").rename(patient / "P09CONTOURS-MANUAL")
    contours = patient / "P09CONTOURS-MANUAL"
    for path in contours.iterdir():
        path.rename(contours / path.name.upper())
    (patient / "P09list.txt").rename(patient / "P09LIST.TXT")
    report = read_rvsc(root)
    assert_every_annotated_frame_has_both_labels(report)
    assert not report.notes and not report.skipped


@pytest.mark.parametrize("folder", ["Patient09", "PATIENT09"])
def test_a_patient_folder_in_another_case_than_its_list_entries(tmp_path, rvsc_root, folder):
    """The list says ``.\\patient09\\P09contours-manual\\...``; the folder on disk is spelled otherwise."""
    root = make_patient_copy(tmp_path, rvsc_root)
    assert "\\patient09\\" in (root / "patient09" / "P09list.txt").read_text()
    (root / "patient09").rename(root / folder)
    report = read_rvsc(root)
    assert_every_annotated_frame_has_both_labels(report)
    assert not report.notes and not report.skipped


def test_list_entries_relative_to_the_patient_folder(tmp_path, rvsc_root):
    """``P09contours-manual\\P09-0020-icontour-manual.txt``, without the ``.\\patient09\\`` part."""
    root = make_patient_copy(tmp_path, rvsc_root)
    list_file = root / "patient09" / "P09list.txt"
    list_file.write_text(list_file.read_text().replace(".\\patient09\\", ""))
    assert "patient09" not in list_file.read_text()
    report = read_rvsc(root)
    assert_every_annotated_frame_has_both_labels(report)
    assert not report.notes and not report.skipped


def test_two_files_of_one_frame_differing_in_case_are_refused(tmp_path, rvsc_root):
    root = make_patient_copy(tmp_path, rvsc_root)
    shutil.copy(root / "patient09" / "P09dicom" / "P09-0021.dcm", root / "patient09" / "P09dicom" / "p09-0020.dcm")
    message = raised_message(root)
    assert "a second file of frame P09-0020" in message


def test_two_folders_differing_only_in_case_are_named_not_reported_missing(tmp_path, rvsc_root):
    """P09dicom is looked up in any case; with both P09DICOM and P09Dicom on disk the message must say
    so, not 'no DICOM frames'. With --skip-bad the patient is skipped with that reason."""
    root = make_patient_copy(tmp_path, rvsc_root)
    patient = root / "patient09"
    (patient / "P09dicom").rename(patient / "P09DICOM")
    shutil.copytree(patient / "P09DICOM", patient / "P09Dicom")
    message = raised_message(root)
    assert str(patient) in message and "P09DICOM and P09Dicom differ only in letter case" in message
    report = read_rvsc(root, skip_bad=True)
    assert report.samples == [] and len(report.skipped) == 1
    assert "differ only in letter case" in report.skipped[0]["reason"]


def test_a_relative_study_path_reads_without_false_notes(tmp_path, rvsc_root, monkeypatch):
    root = make_patient_copy(tmp_path, rvsc_root)
    monkeypatch.chdir(root.parent)
    report = read_rvsc(Path(root.name))
    assert [s.id for s in report.samples] == ["P09-" + frame for frame in ANNOTATED]
    assert report.notes == []


def test_a_contour_file_with_a_byte_order_mark(tmp_path, rvsc_root):
    root = make_patient_copy(tmp_path, rvsc_root)
    path = root / "patient09" / "P09contours-manual" / "P09-0020-icontour-manual.txt"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert [s.id for s in read_rvsc(root).samples] == ["P09-" + frame for frame in ANNOTATED]


@pytest.mark.parametrize("syntax", ["jpeg-lossless", "jpeg-ls", "jpeg-2000"])
def test_compressed_frames_read_as_the_uncompressed_ones(tmp_path, rvsc_root, report, syntax):
    """PACS exports are often JPEG Lossless, JPEG-LS or JPEG 2000; python-gdcm (a dependency) decodes them."""
    root = make_patient_copy(tmp_path, rvsc_root, frames=[f"{frame:04d}" for frame in range(24)])
    for path in sorted((root / "patient09" / "P09dicom").glob("*.dcm")):
        compress_dicom(path, syntax)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID.is_compressed
    compressed = read_rvsc(root)
    assert [(s.id, s.phase, s.slice) for s in compressed.samples] == [(s.id, s.phase, s.slice) for s in report.samples]
    for read, expected in zip(compressed.samples, report.samples, strict=True):
        assert np.array_equal(read.image, expected.image)
        assert np.array_equal(read.masks["endo"], expected.masks["endo"])


@pytest.mark.filterwarnings("error::UserWarning")  # pydicom's remarks stay inside the reader's one line
def test_a_compressed_file_cut_short_is_refused_in_one_line(tmp_path, rvsc_root):
    path = tmp_path / "cut.dcm"
    shutil.copy(rvsc_root / "patient09" / "P09dicom" / "P09-0020.dcm", path)
    compress_dicom(path, "jpeg-lossless")
    path.write_bytes(path.read_bytes()[:-10000])  # inside the encapsulated pixel data, before its delimiter
    for read in (read_dicom, read_dicom_header):
        with pytest.raises(DataError, match=r"corrupt DICOM file \(End of file reached before delimiter \(FFFE,E0DD\) "
                                            r"found: it is truncated or damaged\)$"):
            read(path)


@pytest.mark.filterwarnings("error::UserWarning")
def test_pixel_data_decoded_despite_pydicom_s_remarks_reads_without_them(tmp_path, rvsc_root):
    """Padding after the last frame and NumberOfFrames 0 (read as 1) decode, and pydicom's remarks on
    them stay inside the reader."""
    source = rvsc_root / "patient09" / "P09dicom" / "P09-0020.dcm"
    expected = read_dicom(source).pixels
    dataset = pydicom.dcmread(source)
    dataset.PixelData += b"\0" * 64
    dataset.save_as(tmp_path / "padded.dcm")
    dataset = pydicom.dcmread(source)
    dataset.NumberOfFrames = 0
    dataset.save_as(tmp_path / "frames0.dcm")
    for name in ("padded.dcm", "frames0.dcm"):
        assert np.array_equal(read_dicom(tmp_path / name).pixels, expected)


def test_a_compressed_dicom_without_its_decoder_says_what_to_install(tmp_path, rvsc_root):
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG2MPML, HTJ2KLossless

    dataset = pydicom.dcmread(rvsc_root / "patient09" / "P09dicom" / "P09-0020.dcm")
    dataset.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 64])
    dataset["PixelData"].VR = "OB"
    for syntax, hint in ((HTJ2KLossless, "pylibjpeg-openjpeg"), (MPEG2MPML, "pydicom has no decoder for it")):
        dataset.file_meta.TransferSyntaxUID = syntax
        dataset.save_as(tmp_path / "compressed.dcm")
        for read in (read_dicom, read_dicom_header):
            with pytest.raises(DataError) as raised:
                read(tmp_path / "compressed.dcm")
            message = str(raised.value)
            assert "\n" not in message and syntax.name in message and hint in message and "gdcmconv --raw" in message


def test_monochrome1_is_read_with_the_usual_contrast(tmp_path, rvsc_root):
    original = rvsc_root / "patient09" / "P09dicom" / "P09-0020.dcm"
    dataset = pydicom.dcmread(original)
    dataset.PhotometricInterpretation = "MONOCHROME1"
    dataset.save_as(tmp_path / "mono1.dcm")
    plain, inverted = read_dicom(original).pixels, read_dicom(tmp_path / "mono1.dcm").pixels
    assert int(dataset.BitsStored) == 16 and int(dataset.PixelRepresentation) == 0
    assert np.array_equal(inverted, 65535 - plain)  # within the stored range, the same for every image


def test_a_frame_without_pixel_spacing_or_with_another_one_is_noted(tmp_path, rvsc_root):
    root = make_patient_copy(tmp_path, rvsc_root)
    for frame, change in (("0020", lambda d: delattr(d, "PixelSpacing")),
                          ("0022", lambda d: setattr(d, "PixelSpacing", [0.7, 1.4]))):
        path = root / "patient09" / "P09dicom" / f"P09-{frame}.dcm"
        dataset = pydicom.dcmread(path)
        change(dataset)
        dataset.save_as(path)
    notes = read_rvsc(root).notes
    assert any("1 image(s) without PixelSpacing (first: P09-0020)" in note for note in notes)
    assert any("different pixel spacings" in note and "0.7 x 1.4 mm (1)" in note for note in notes)


def test_a_transfer_syntax_pydicom_does_not_know_is_named_as_such(tmp_path, rvsc_root):
    dataset = pydicom.dcmread(rvsc_root / "patient09" / "P09dicom" / "P09-0020.dcm")
    dataset.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7"
    dataset.save_as(tmp_path / "private.dcm")
    with pytest.raises(DataError, match="1.2.3.4.5.6.7 is not a DICOM transfer syntax pydicom knows"):
        read_dicom(tmp_path / "private.dcm")

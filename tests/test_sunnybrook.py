"""Sunnybrook reader, on the real subset, on copies of it laid out as the challenge and Cardiac Atlas
Project downloads, and on broken copies of one patient."""

from __future__ import annotations

import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from helpers import crop_dicom

from rvseg.data.contours import polygon_area, read_contour_file
from rvseg.data.dicom import dicom_stacks, plane_positions, read_dicom
from rvseg.data.formats import detect_format, read_dataset
from rvseg.data.sunnybrook import looks_like_sunnybrook, read_sunnybrook
from rvseg.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def sunnybrook_root(shared_data) -> Path:
    return shared_data / "sunnybrook-subset"


@pytest.fixture(scope="module")
def report(sunnybrook_root):
    return read_sunnybrook(sunnybrook_root)


def make_copy(tmp_path: Path, sunnybrook_root: Path, links=(("SCD0000101", "SC-HF-I-1"),)) -> Path:
    """A copy holding only the patients in ``links`` and a link.csv naming them."""
    root = tmp_path / "sunnybrook"
    for patient_id, original_id in links:
        shutil.copytree(sunnybrook_root / "dicoms" / patient_id, root / "dicoms" / patient_id)
        shutil.copytree(sunnybrook_root / "contourfiles" / original_id, root / "contourfiles" / original_id)
    rows = ["patient_id,original_id"] + [f"{p},{o}" for p, o in links]
    (root / "link.csv").write_text("\n".join(rows) + "\n")
    return root


def raised_message(root: Path, **kwargs) -> str:
    with pytest.raises(DataError) as raised:
        read_sunnybrook(root, **kwargs)
    return str(raised.value)


# --- the real subset ----------------------------------------------------------------------------


def test_subset_counts(report):
    assert report.format == "sunnybrook"
    assert report.labels == ("endo", "epi")
    assert len(report.samples) == 96
    assert all("endo" in s.masks for s in report.samples)
    assert sum("epi" in s.masks for s in report.samples) == 46
    assert len(report.unmatched_images) == 10
    assert report.unmatched_contours == []
    assert report.patients == ["SCD0000101", "SCD0000201", "SCD0000301", "SCD0000401", "SCD0000501"]
    assert report.skipped == []


def test_subset_samples(report, sunnybrook_root):
    sample = next(s for s in report.samples if s.id == "SCD0000101-0048")
    assert sample.patient == "SCD0000101" and sample.frame == 48 and sample.phase == "ES"
    assert sample.image.shape == (256, 256) and sample.image.dtype == np.float32
    assert sample.spacing_mm == pytest.approx((1.367188, 1.367188))
    assert sample.slice == f"{sample.slice_location:.2f}"
    assert sample.sources["image"] == str(sunnybrook_root / "dicoms" / "SCD0000101" / "48.dcm")
    assert sample.sources["endo"] == str(
        sunnybrook_root / "contourfiles" / "SC-HF-I-1" / "i-contours" / "IM-0001-0048-icontour-manual.txt"
    )
    assert all(1.28 <= s.spacing_mm[0] <= 1.37 for s in report.samples)
    assert [s.id for s in report.samples] == sorted(s.id for s in report.samples)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's words about the scanner's UIDs
def test_slice_spacing_is_measured_between_the_image_planes(sunnybrook_root):
    # This GE study writes SliceLocation along the table axis: 6.72 mm apart for slices whose planes
    # are 10 mm apart (SpacingBetweenSlices 10); volumes must use the planes' distance.
    (stack,) = dicom_stacks(read_dicom(path) for path in (sunnybrook_root / "dicoms" / "SCD0000101").glob("*.dcm"))
    planes = np.unique(np.round(plane_positions(stack), 2))
    locations = np.unique([round(image.slice_location, 2) for image in stack])
    assert len(planes) == len(locations) == 10  # the subset lacks the slice between the last two
    assert np.diff(planes) == pytest.approx([10.0] * 8 + [20.0], abs=0.01)
    assert np.diff(locations) == pytest.approx([6.72] * 8 + [13.44], abs=0.01)
    assert stack[0].slice_thickness_mm == 10.0


def test_subset_phases(report):
    # Each patient was contoured at two phases of every slice (e.g. images 48 and 59: phases 8 and
    # 19 of 20). The larger cavity is ED; independently of that rule, the experts drew every
    # o-contour at ED only, which the assignment must reproduce.
    for patient in report.patients:
        samples = [s for s in report.samples if s.patient == patient]
        phases = {s.phase for s in samples}
        assert phases == {"ED", "ES"}
        assert all(s.phase == "ED" for s in samples if "epi" in s.masks)
        index = {phase: {(s.frame - 1) % 20 for s in samples if s.phase == phase} for phase in phases}
        assert len(index["ED"]) == len(index["ES"]) == 1
    assert sum(s.phase == "ED" for s in report.samples) == 48


def test_subset_mask_areas_match_polygons(report):
    # Sunnybrook contours run in half-pixel steps along pixel centres: counting every centre on an
    # edge as inside would make each mask 1.3-10% larger than its polygon (mean 2.4%).
    errors, areas = [], []
    for sample in report.samples:
        for label, mask in sample.masks.items():
            area = polygon_area(read_contour_file(sample.sources[label]))
            errors.append(abs(np.count_nonzero(mask) - area) / area)
            areas.append(area)
    errors, areas = np.asarray(errors), np.asarray(areas)
    assert len(errors) == 142
    assert errors.mean() < 0.01  # measured 0.49%
    assert errors[areas >= 1000].max() < 0.015  # measured 1.1%
    assert errors.max() < 0.04  # measured 3.4%, on a 92 px apical contour


def test_subset_flags_the_patient_whose_contours_do_not_nest(report):
    # Measured: in SCD0000501 (SC-HF-I-6) every o-contour is shifted ~12 px from its i-contour, so
    # 20-60% of the endo mask lies outside epi; elsewhere at most 7 of ~2000 pixels do.
    flagged = sorted(note.split(":")[0] for note in report.notes if "do not nest" in note)
    with_epi = sorted(s.id for s in report.samples if s.patient == "SCD0000501" and "epi" in s.masks)
    assert flagged == with_epi and len(flagged) == 9


def test_the_subset_s_copied_o_contours_are_named(sunnybrook_root, tmp_path):
    """Why SC-HF-I-6's contours do not nest: its 9 o-contour files are SC-HF-I-1's, byte for byte.
    The samples stay (the shared data README counts them); the note says which files."""
    read = read_dataset(sunnybrook_root)
    (note,) = [note for note in read.notes if "byte for byte" in note]
    first = sunnybrook_root / "contourfiles" / "SC-HF-I-{}" / "o-contours" / "IM-0001-0059-ocontour-manual.txt"
    assert note == (f"9 annotation file(s) are byte for byte another image's (first: {str(first).format(1)} and "
                    f"{str(first).format(6)}): one of each is a copy, whose masks are the other image's; check the "
                    "data")
    assert sum("epi" in sample.masks for sample in read.samples) == 46
    alone = make_copy(tmp_path, sunnybrook_root, links=(("SCD0000501", "SC-HF-I-6"),))
    assert not [note for note in read_dataset(alone).notes if "byte for byte" in note]
    # Blank contour maps of two images are alike without being copies: they give no mask, and no note.
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    for stem, top in (("A-0001", 10), ("A-0002", 20)):
        outline = np.zeros((64, 64), np.uint8)
        outline[top:top + 20, 20:44] = 255
        iio.imwrite(pairs / f"{stem}.png", np.full((64, 64), 100, np.uint8))
        iio.imwrite(pairs / f"{stem}-ocontour-manual.png", outline)
        iio.imwrite(pairs / f"{stem}-icontour-manual.png", np.zeros((64, 64), np.uint8))
    read = read_dataset(pairs)
    assert len(read.samples) == 2 and len(read.unfillable) == 2
    assert not [note for note in read.notes if "byte for byte" in note]


def test_caller_names_the_labels(tmp_path, sunnybrook_root):
    report = read_sunnybrook(make_copy(tmp_path, sunnybrook_root), labels=("lv_endo", "lv_epi"))
    assert report.labels == ("lv_endo", "lv_epi")
    assert {label for s in report.samples for label in s.masks} == {"lv_endo", "lv_epi"}
    assert all("lv_endo" in s.masks for s in report.samples)


@pytest.mark.parametrize("labels", [("endo",), ("endo", "endo"), ("endo", "")])
def test_bad_labels(tmp_path, labels):
    with pytest.raises(ConfigError):
        read_sunnybrook(tmp_path, labels=labels)


def test_looks_like_sunnybrook(sunnybrook_root, shared_data, tmp_path):
    assert looks_like_sunnybrook(sunnybrook_root)
    assert not looks_like_sunnybrook(shared_data / "rvsc-native")
    assert not looks_like_sunnybrook(tmp_path)


# --- broken copies ------------------------------------------------------------------------------


def test_copy_of_one_patient(tmp_path, sunnybrook_root):
    report = read_sunnybrook(make_copy(tmp_path, sunnybrook_root))
    assert report.patients == ["SCD0000101"]
    assert len(report.samples) == 18
    assert sum("epi" in s.masks for s in report.samples) == 9
    assert len(report.unmatched_images) == 2


def test_not_a_sunnybrook_folder(tmp_path):
    message = raised_message(tmp_path)
    assert str(tmp_path) in message and "link.csv, dicoms/ and contourfiles/" in message


def test_patient_in_link_csv_missing_on_disk(tmp_path, sunnybrook_root):
    root = make_copy(tmp_path, sunnybrook_root)
    with (root / "link.csv").open("a") as handle:
        handle.write("SCD0000201,SC-HF-I-2\n")
    message = raised_message(root)
    assert str(root / "dicoms" / "SCD0000201") in message
    assert "patient SCD0000201 (SC-HF-I-2) is listed in link.csv but this folder does not exist" in message

    report = read_sunnybrook(root, skip_bad=True)
    assert report.patients == ["SCD0000101"] and len(report.samples) == 18
    assert [entry["path"] for entry in report.skipped] == [str(root / "dicoms" / "SCD0000201")]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("id,original\nSCD0000101,SC-HF-I-1\n", "expected the header 'patient_id,original_id'"),
        ("patient_id,original_id\nSCD0000101\n", "line 2 is malformed"),
        ("patient_id,original_id\nSCD0000101,SC-HF-I-1\nSCD0000101,SC-HF-I-1\n", "line 3"),
        ("patient_id,original_id\n", "lists no patient"),
    ],
)
def test_malformed_link_csv(tmp_path, sunnybrook_root, text, problem):
    root = make_copy(tmp_path, sunnybrook_root)
    (root / "link.csv").write_text(text)
    message = raised_message(root)
    assert str(root / "link.csv") in message and problem in message


def test_corrupt_dicom(tmp_path, sunnybrook_root):
    root = make_copy(tmp_path, sunnybrook_root)
    path = root / "dicoms" / "SCD0000101" / "48.dcm"
    path.write_bytes(b"\0" * 50)
    message = raised_message(root)
    assert str(path) in message and "not a DICOM file" in message


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's words about the scanner's UIDs
def test_mixed_image_sizes(tmp_path, sunnybrook_root):
    root = make_copy(tmp_path, sunnybrook_root)
    path = root / "dicoms" / "SCD0000101" / "48.dcm"
    crop_dicom(path, 200, 180)
    message = raised_message(root)
    assert message == f"{path}: image is 200 x 180 but the other images of patient SCD0000101 are 256 x 256"
    report = read_sunnybrook(root, skip_bad=True)
    assert [entry["path"] for entry in report.skipped] == [str(path)] and len(report.samples) == 17


def test_contour_far_outside(tmp_path, sunnybrook_root):
    root = make_copy(tmp_path, sunnybrook_root)
    path = root / "contourfiles" / "SC-HF-I-1" / "o-contours" / "IM-0001-0059-ocontour-manual.txt"
    path.write_text(path.read_text() + "300.0 120.0\n")
    message = raised_message(root)
    assert str(path) in message and "lie outside the 256 x 256 image" in message


def test_misnamed_contour_file(tmp_path, sunnybrook_root):
    root = make_copy(tmp_path, sunnybrook_root)
    folder = root / "contourfiles" / "SC-HF-I-1" / "i-contours"
    path = folder / "IM-0001-0048-ocontour-manual.txt"  # an o-contour in the i-contour folder
    shutil.move(folder / "IM-0001-0048-icontour-manual.txt", path)
    message = raised_message(root)
    assert str(path) in message and "IM-0001-NNNN-icontour-manual.txt" in message


def test_o_contour_without_i_contour_and_contour_without_image(tmp_path, sunnybrook_root):
    root = make_copy(tmp_path, sunnybrook_root)
    contours = root / "contourfiles" / "SC-HF-I-1"
    (contours / "i-contours" / "IM-0001-0059-icontour-manual.txt").unlink()
    (root / "dicoms" / "SCD0000101" / "79.dcm").unlink()
    report = read_sunnybrook(root)
    sample = next(s for s in report.samples if s.id == "SCD0000101-0059")
    assert list(sample.masks) == ["epi"]
    assert report.notes == ["SCD0000101-0059: o-contour without an i-contour; the sample has only 'epi'"]
    assert [Path(p).name for p in report.unmatched_contours] == [
        "IM-0001-0079-icontour-manual.txt",
        "IM-0001-0079-ocontour-manual.txt",
    ]
    assert len(report.samples) == 17


def test_skip_bad_records_the_file_and_keeps_the_rest(tmp_path, sunnybrook_root):
    root = make_copy(tmp_path, sunnybrook_root)
    bad = root / "dicoms" / "SCD0000101" / "48.dcm"
    bad.write_bytes(b"\0" * 50)
    report = read_sunnybrook(root, skip_bad=True)
    assert len(report.samples) == 17
    assert "SCD0000101-0048" not in {s.id for s in report.samples}
    assert [entry["path"] for entry in report.skipped] == [str(bad)]
    assert "not a DICOM file" in report.skipped[0]["reason"]


# --- the challenge and Cardiac Atlas Project downloads -------------------------------------------

ORIGINAL_IDS = {"SCD0000101": "SC-HF-I-1", "SCD0000201": "SC-HF-I-2"}


def copy_contours(sunnybrook_root: Path, original_id: str, case_folder: Path) -> None:
    """The subset's contours of one case, as ``<case>/contours-manual/IRCCI-expert/``, with one papillary contour."""
    expert = case_folder / "contours-manual" / "IRCCI-expert"
    expert.mkdir(parents=True)
    for kind in ("i", "o"):
        for path in (sunnybrook_root / "contourfiles" / original_id / f"{kind}-contours").glob("*.txt"):
            shutil.copy(path, expert)
    first = min(expert.glob("*-icontour-manual.txt"))
    shutil.copy(first, expert / first.name.replace("icontour", "p1contour"))


def copy_images(sunnybrook_root: Path, patient_id: str, folder: Path, series: int, numbers=None) -> None:
    """The subset's DICOMs of one patient as ``folder/IM-SSSS-NNNN.dcm`` (only ``numbers`` when given)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in (sunnybrook_root / "dicoms" / patient_id).glob("*.dcm"):
        if numbers is None or int(path.stem) in numbers:
            shutil.copy(path, folder / f"IM-{series:04d}-{int(path.stem):04d}.dcm")


def make_challenge_download(tmp_path: Path, sunnybrook_root: Path) -> Path:
    """The Kaggle DSB 2015 tutorial's layout: padded case folders for the contours, unpadded ones
    holding every series of the study mixed (here the cine as series 4, and two decoys)."""
    root = tmp_path / "Sunnybrook_data"
    contours = root / "Sunnybrook Cardiac MR Database ContoursPart3" / "TrainingDataContours"
    for patient_id, original_id in ORIGINAL_IDS.items():
        copy_contours(sunnybrook_root, original_id, contours / original_id.replace("-I-", "-I-0"))
        images = root / "challenge_training" / original_id
        copy_images(sunnybrook_root, patient_id, images, series=4)
        copy_images(sunnybrook_root, patient_id, images, series=3, numbers={48, 59})
    # a decoy holding exactly the contoured images of the first case: it covers them all, but the cine is larger
    contoured = {int(p.name[8:12]) for p in (contours / "SC-HF-I-01").rglob("*contour-manual.txt")}
    copy_images(sunnybrook_root, "SCD0000101", root / "challenge_training" / "SC-HF-I-1", series=9, numbers=contoured)
    return root


def make_atlas_download(tmp_path: Path, sunnybrook_root: Path) -> Path:
    """The Cardiac Atlas Project's layout: SCD_IMAGES_0N/<PatientID>/CINESAX_300/, SCD_ManualContours/
    <padded OriginalID>/, and scd_patientdata.csv mapping the two."""
    root = tmp_path / "scd"
    for n, (patient_id, original_id) in enumerate(ORIGINAL_IDS.items(), start=1):
        copy_images(sunnybrook_root, patient_id, root / f"SCD_IMAGES_0{n}" / patient_id / "CINESAX_300", series=3)
        case = root / "scd_manualcontours" / "SCD_ManualContours" / original_id.replace("-I-", "-I-0")
        copy_contours(sunnybrook_root, original_id, case)
    rows = ["PatientID,OriginalID,Gender,Age,Pathology"]
    rows += [f"{p},{o},Male,60,Heart failure with infarct" for p, o in ORIGINAL_IDS.items()]
    (root / "scd_patientdata.csv").write_text("\n".join(rows) + "\n")
    return root


def assert_same_samples(got, want, patient_names: dict[str, str]) -> None:
    """``got`` holds ``want``'s samples, patients renamed by ``patient_names``, with equal masks and phases."""
    assert len(got.samples) == len(want.samples)
    for sample in want.samples:
        twin = next(s for s in got.samples if s.id == f"{patient_names[sample.patient]}-{sample.frame:04d}")
        assert (twin.phase, twin.slice, twin.spacing_mm) == (sample.phase, sample.slice, sample.spacing_mm)
        assert twin.masks.keys() == sample.masks.keys()
        assert all(np.array_equal(twin.masks[k], sample.masks[k]) for k in sample.masks)
        assert np.array_equal(twin.image, sample.image)


@pytest.fixture(scope="module")
def two_patients(report):
    """The link.csv reading of the two patients that the download copies hold."""
    return type(report)(format=report.format, labels=report.labels,
                        samples=[s for s in report.samples if s.patient in ORIGINAL_IDS])


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_challenge_download_reads_like_the_subset(tmp_path, sunnybrook_root, two_patients):
    root = make_challenge_download(tmp_path, sunnybrook_root)
    assert looks_like_sunnybrook(root) and detect_format(root) == "sunnybrook"
    read = read_sunnybrook(root)
    assert read.patients == ["SC-HF-I-1", "SC-HF-I-2"]
    assert_same_samples(read, two_patients, ORIGINAL_IDS)
    assert all("IM-0004-" in s.sources["image"] for s in read.samples)  # the cine, not a decoy
    (note,) = [n for n in read.notes if "series hold every contoured image" in n]
    assert "IM-0004 (20 images)" in note and "IM-0009 (18 images)" in note and "the largest" in note
    assert sum("papillary" in n for n in read.notes) == 2
    assert len(read.unmatched_images) == 4  # the two uncontoured images of each cine


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_of_two_equal_series_covering_the_contours_the_one_they_were_drawn_on_is_read(tmp_path, sunnybrook_root):
    """SC-HYP-11's folder holds IM-0601 and IM-0606, equal in size; public loaders disagree on which one
    the experts traced. Here the decoy (a lower series number, read first) is the cine shifted sideways."""
    import pydicom

    root = tmp_path / "dl"
    copy_contours(sunnybrook_root, "SC-HF-I-1", root / "TrainingDataContours" / "SC-HF-I-01")
    images = root / "challenge_training" / "SC-HF-I-1"
    copy_images(sunnybrook_root, "SCD0000101", images, series=606)
    for path in sorted(images.glob("IM-0606-*.dcm")):
        dataset = pydicom.dcmread(path)
        dataset.PixelData = np.ascontiguousarray(np.roll(dataset.pixel_array, 60, axis=1)).tobytes()
        dataset.save_as(images / path.name.replace("IM-0606", "IM-0601"))
    read = read_sunnybrook(root)
    assert read.samples and all("IM-0606-" in s.sources["image"] for s in read.samples)
    (note,) = [n for n in read.notes if "series hold every contoured image" in n]
    assert "read " in note and "IM-0606-*, of the largest, the one whose images are brightest" in note


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_atlas_download_reads_like_the_subset(tmp_path, sunnybrook_root, two_patients):
    root = make_atlas_download(tmp_path, sunnybrook_root)
    assert detect_format(root) == "sunnybrook"
    read = read_sunnybrook(root, labels=("endo", "epi"))
    assert read.patients == ["SCD0000101", "SCD0000201"]
    assert_same_samples(read, two_patients, {p: p for p in ORIGINAL_IDS})
    assert not any("series hold every" in n for n in read.notes)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("table", ["SCD_PatientData.csv", "scd_patientdata.xlsx", "SCD_PatientData.xlsx"])
def test_the_patient_table_in_any_case_and_as_an_excel_workbook(tmp_path, sunnybrook_root, two_patients, table):
    """Copies of the Cardiac Atlas Project download name the table in either case, and as .xlsx."""
    openpyxl = pytest.importorskip("openpyxl")
    root = make_atlas_download(tmp_path, sunnybrook_root)
    rows = [line.split(",") for line in (root / "scd_patientdata.csv").read_text().splitlines()]
    (root / "scd_patientdata.csv").unlink()
    if table.endswith(".csv"):
        (root / table).write_text("\n".join(",".join(row) for row in rows) + "\n")
    else:
        book = openpyxl.Workbook()
        book.active.title = "patients"
        for row in rows:
            book.active.append([int(cell) if cell.isdigit() else cell for cell in row])  # Age as a number
        book.create_sheet("notes").append(["PatientID", "not the table"])
        book.save(root / table)
    read = read_sunnybrook(root, labels=("endo", "epi"))
    assert read.patients == ["SCD0000101", "SCD0000201"]
    assert_same_samples(read, two_patients, {p: p for p in ORIGINAL_IDS})


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_without_the_patient_table_the_message_says_it_is_missing(tmp_path, sunnybrook_root):
    root = make_atlas_download(tmp_path, sunnybrook_root)
    (root / "scd_patientdata.csv").unlink()
    message = raised_message(root)
    assert "no IM-SSSS-NNNN.dcm images of the contoured numbers" in message
    assert message.endswith(f"no patient table (scd_patientdata.csv or scd_patientdata.xlsx, which maps each case "
                            f"to the PatientID naming its image folder) was found in {root} or two levels below it")
    (root / "scd_patientdata.xlsx").write_bytes(b"not a workbook")
    message = raised_message(root)
    assert message.startswith(f"{root / 'scd_patientdata.xlsx'}: cannot read (BadZipFile")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_download_case_without_images(tmp_path, sunnybrook_root):
    root = make_atlas_download(tmp_path, sunnybrook_root)
    shutil.rmtree(root / "SCD_IMAGES_02")
    case = root / "scd_manualcontours" / "SCD_ManualContours" / "SC-HF-I-02"
    message = raised_message(root)
    assert message.startswith(f"{case}: no IM-SSSS-NNNN.dcm images of the contoured numbers for case SC-HF-I-2")
    assert "PatientID" in message
    read = read_sunnybrook(root, skip_bad=True)
    assert read.patients == ["SCD0000101"] and [e["path"] for e in read.skipped] == [str(case)]


def test_download_contour_file_misnamed(tmp_path, sunnybrook_root):
    root = make_atlas_download(tmp_path, sunnybrook_root)
    bad = root / "scd_manualcontours" / "SCD_ManualContours" / "SC-HF-I-01" / "contours-manual" / "IRCCI-expert"
    bad = bad / "IM-0001-48-contour.txt"
    bad.write_text("1 2\n")
    message = raised_message(root)
    assert message.startswith(f"{bad}: file name does not follow IM-0001-NNNN-")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_dicom_part_download_with_its_padded_image_folders(tmp_path, sunnybrook_root, two_patients):
    # "Sunnybrook Cardiac MR Database DICOMPart3/TrainingDataDICOM/SC-HF-I-01/DICOM/IM-0001-NNNN.dcm",
    # contours in the ContoursPart tree under the same padded case name; a macOS zip leftover and a
    # folder whose name has a non-ASCII digit are ignored.
    root = tmp_path / "Sunnybrook_data"
    for patient_id, original_id in ORIGINAL_IDS.items():
        padded = original_id.replace("-I-", "-I-0")
        copy_images(sunnybrook_root, patient_id, root / "DICOMPart3" / "TrainingDataDICOM" / padded / "DICOM", series=1)
        copy_contours(sunnybrook_root, original_id, root / "ContoursPart3" / "TrainingDataContours" / padded)
    shutil.copytree(root / "ContoursPart3", root / "__MACOSX" / "ContoursPart3")
    (root / "notes" / "fig-\u00b2").mkdir(parents=True)
    read = read_sunnybrook(root)
    assert read.patients == ["SC-HF-I-1", "SC-HF-I-2"]  # the same ids as the challenge layout's
    assert_same_samples(read, two_patients, ORIGINAL_IDS)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_images_inside_the_case_folder_and_symlinked_folders(tmp_path, sunnybrook_root, two_patients):
    store = tmp_path / "store"
    for patient_id, original_id in ORIGINAL_IDS.items():
        copy_contours(sunnybrook_root, original_id, store / original_id)
        copy_images(sunnybrook_root, patient_id, store / original_id / "DICOM", series=5)
    root = tmp_path / "data"
    root.mkdir()
    (root / "cases").symlink_to(store, target_is_directory=True)
    (store / "loop").symlink_to(store, target_is_directory=True)  # a cycle: entered once
    assert_same_samples(read_sunnybrook(root), two_patients, ORIGINAL_IDS)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_phases_stay_unknown_without_a_slice_contoured_at_both(tmp_path, sunnybrook_root):
    root = make_atlas_download(tmp_path, sunnybrook_root)
    expert = root / "scd_manualcontours" / "SCD_ManualContours" / "SC-HF-I-01" / "contours-manual" / "IRCCI-expert"
    for path in expert.glob("*-icontour-manual.txt"):
        number = int(path.name[8:12])
        if (number - 1) % 20 < 10:  # drop every i-contour of the ES phase (image 48 is phase 8)
            path.unlink()
    read = read_sunnybrook(root)
    first = [s for s in read.samples if s.patient == "SCD0000101"]
    assert first and {s.phase for s in first} == {"unknown"}
    assert any(n.startswith("SCD0000101: contours at 1 phase(s)") for n in read.notes)
    assert {s.phase for s in read.samples if s.patient == "SCD0000201"} == {"ED", "ES"}


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_case_found_twice_is_refused(tmp_path, sunnybrook_root):
    root = make_atlas_download(tmp_path, sunnybrook_root)
    contours = root / "scd_manualcontours" / "SCD_ManualContours"
    shutil.copytree(contours / "SC-HF-I-01", root / "copy" / "SC-HF-I-1")  # padded and unpadded: one case
    message = raised_message(root)
    assert message.startswith(f"{root / 'scd_manualcontours' / 'SCD_ManualContours' / 'SC-HF-I-01'}: patient "
                              f"SC-HF-I-1 was already read from {root / 'copy' / 'SC-HF-I-1'}")
    read = read_sunnybrook(root, skip_bad=True)
    assert read.patients == ["SCD0000101", "SCD0000201"]


def test_upper_case_names_and_duplicate_images(tmp_path, sunnybrook_root):
    root = make_copy(tmp_path, sunnybrook_root)
    want = [(s.id, sorted(s.masks)) for s in read_sunnybrook(root).samples]
    (root / "dicoms" / "SCD0000101" / "48.dcm").rename(root / "dicoms" / "SCD0000101" / "48.DCM")
    contours = root / "contourfiles" / "SC-HF-I-1" / "i-contours"
    (contours / "IM-0001-0059-icontour-manual.txt").rename(contours / "IM-0001-0059-icontour-manual.TXT")
    report = read_sunnybrook(root)
    assert [(s.id, sorted(s.masks)) for s in report.samples] == want
    assert not report.unmatched_contours
    shutil.copy(contours / "IM-0001-0048-icontour-manual.txt", contours / "im-0001-0048-icontour-manual.txt")
    assert "a second i-contour file of image 48" in raised_message(root)
    (contours / "im-0001-0048-icontour-manual.txt").unlink()
    shutil.copy(root / "dicoms" / "SCD0000101" / "59.dcm", root / "dicoms" / "SCD0000101" / "048.dcm")
    assert "a second file of image 48" in raised_message(root)

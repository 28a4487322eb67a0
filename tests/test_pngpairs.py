"""PNG pairs with a CSV manifest: a synthetic folder for every rule, and the real RVSC training set."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from skimage.io import imsave

from rvseg.data.formats import detect_format
from rvseg.data.pngpairs import looks_like_pngpairs, read_pngpairs
from rvseg.errors import DataError

HEADER = "image_file,image_file_i_contour,image_file_o_contour"
SHAPE = (24, 20)


def rectangle_outline(shape: tuple[int, int], top: int, left: int, bottom: int, right: int) -> np.ndarray:
    """uint8 0/255 map holding the 1-pixel border of rows top..bottom, columns left..right (inclusive)."""
    outline = np.zeros(shape, dtype=np.uint8)
    outline[top : bottom + 1, [left, right]] = 255
    outline[[top, bottom], left : right + 1] = 255
    return outline


def save(path: Path, pixels: np.ndarray) -> None:
    imsave(path, pixels, check_contrast=False)


def write_pair(root: Path, stem: str, shape: tuple[int, int] = SHAPE) -> str:
    """An image (column index as grey level) with an endo 6 x 5 and an epi 10 x 9 rectangle outline."""
    image = np.tile(np.arange(shape[1], dtype=np.uint8) * 10, (shape[0], 1))
    save(root / f"{stem}.png", image)
    save(root / f"{stem}-icontour-manual.png", rectangle_outline(shape, 8, 6, 13, 10))
    save(root / f"{stem}-ocontour-manual.png", rectangle_outline(shape, 6, 4, 15, 12))
    return f"{stem}.png,{stem}-icontour-manual.png,{stem}-ocontour-manual.png"


def write_manifest(root: Path, rows: list[str], header: str = HEADER, name: str = "list.csv") -> Path:
    path = root / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two RVSC-like patients: P01 frames 0020 (ED) and 0027 (ES), P02 frame 0040 (ED)."""
    rows = [write_pair(tmp_path, stem) for stem in ("P01-0020", "P01-0027", "P02-0040")]
    write_manifest(tmp_path, rows)
    return tmp_path


def test_reads_samples_with_names_phases_and_filled_masks(folder):
    report = read_pngpairs(folder)
    assert report.format == "pngpairs" and report.labels == ("endo", "epi")
    assert [s.id for s in report.samples] == ["P01-0020", "P01-0027", "P02-0040"]
    assert report.patients == ["P01", "P02"]
    assert [(s.frame, s.slice, s.phase) for s in report.samples] == [(20, "1", "ED"), (27, "1", "ES"), (40, "2", "ED")]
    sample = report.samples[0]
    assert sample.image.dtype == np.float32 and sample.image.shape == SHAPE
    assert sample.image[3, 7] == 70.0  # raw grey level, column 7 * 10
    assert sample.spacing_mm is None
    assert sample.masks["endo"].sum() == 6 * 5 and sample.masks["epi"].sum() == 10 * 9
    assert sample.masks["endo"][8:14, 6:11].all()
    assert sample.sources["endo"] == str(folder / "P01-0020-icontour-manual.png")
    assert not (report.unfillable or report.skipped or report.unmatched_images or report.notes)


def test_other_names_have_unknown_phase_and_header_names_are_matched_loosely(tmp_path):
    write_pair(tmp_path, "case7-003")
    write_pair(tmp_path, "scan")
    rows = [
        "case7-003.png,case7-003-icontour-manual.png,case7-003-ocontour-manual.png",
        "scan.png,scan-icontour-manual.png,scan-ocontour-manual.png",
    ]
    write_manifest(tmp_path, rows, header="Image, I-Contour ,OCONTOUR")
    report = read_pngpairs(tmp_path)
    first, second = report.samples
    assert (first.id, first.patient, first.frame, first.phase, first.slice) == ("case7-003", "case7", 3, "unknown", "")
    assert (second.id, second.patient, second.frame, second.phase) == ("scan", "scan", None, "unknown")


def test_paths_are_relative_to_the_manifest_and_colour_images_become_grey(tmp_path):
    (tmp_path / "images").mkdir()
    row = write_pair(tmp_path / "images", "P05-0100")
    colour = np.zeros((*SHAPE, 3), dtype=np.uint8)
    colour[..., 0] = 100  # pure red 100: grey 21.25 with the BT.709 weights
    save(tmp_path / "images" / "P05-0100.png", colour)
    write_manifest(tmp_path, [",".join(f"images\\{name}" for name in row.split(","))])
    (sample,) = read_pngpairs(tmp_path).samples
    assert sample.image.shape == SHAPE
    np.testing.assert_allclose(sample.image, 21.25, atol=0.01)


def test_sixteen_bit_images_keep_their_raw_values(tmp_path):
    write_manifest(tmp_path, [write_pair(tmp_path, "P06-0060")])
    save(tmp_path / "P06-0060.png", np.full(SHAPE, 4000, dtype=np.uint16))
    (sample,) = read_pngpairs(tmp_path).samples
    assert sample.image.dtype == np.float32 and (sample.image == 4000).all()


def test_big_endian_sixteen_bit_tiffs_keep_their_raw_values(tmp_path):
    """ImageJ/Fiji save 16-bit TIFFs big-endian ("I;16B"); converted to RGB they were a flat 255."""
    from PIL import Image

    row = write_pair(tmp_path, "P06-0060").replace("P06-0060.png", "P06-0060.tif", 1)
    (tmp_path / "P06-0060.png").unlink()
    stored = np.arange(SHAPE[0] * SHAPE[1], dtype=np.uint16).reshape(SHAPE) * 9
    Image.frombytes("I;16B", SHAPE[::-1], stored.astype(">u2").tobytes()).save(tmp_path / "P06-0060.tif")
    write_manifest(tmp_path, [row])
    (sample,) = read_pngpairs(tmp_path).samples
    assert np.array_equal(sample.image, stored.astype(np.float32))


def test_unfillable_map_is_reported_and_its_label_left_out(folder):
    save(folder / "P01-0027-icontour-manual.png", np.zeros(SHAPE, dtype=np.uint8))
    report = read_pngpairs(folder)
    assert report.unfillable == [str(folder / "P01-0027-icontour-manual.png")]
    by_id = {s.id: s for s in report.samples}
    assert set(by_id["P01-0027"].masks) == {"epi"}
    assert set(by_id["P01-0020"].masks) == {"endo", "epi"}


def test_empty_contour_cells(tmp_path):
    write_pair(tmp_path, "P01-0020")
    write_pair(tmp_path, "P01-0027")
    write_manifest(tmp_path, ["P01-0020.png,P01-0020-icontour-manual.png,", "P01-0027.png,,"])
    report = read_pngpairs(tmp_path)
    (sample,) = report.samples
    assert sample.id == "P01-0020" and set(sample.masks) == {"endo"}
    assert report.unmatched_images == [str(tmp_path / "P01-0027.png")]
    assert f"{tmp_path / 'P01-0020.png'}: no epi contour map in list.csv (row 2)" in report.notes


def test_missing_manifest_says_what_was_looked_for(tmp_path):
    write_pair(tmp_path, "P01-0020")
    for name in ("P01-0020-icontour-manual.png", "P01-0020-ocontour-manual.png"):
        (tmp_path / name).rename(tmp_path / name.replace("contour", "mask"))
    with pytest.raises(DataError) as error:
        read_pngpairs(tmp_path)
    assert str(tmp_path) in str(error.value)
    assert "no CSV manifest (*.csv) found" in str(error.value) and "image_file_i_contour" in str(error.value)
    assert "<stem>-icontour-manual.png" in str(error.value)
    assert not looks_like_pngpairs(tmp_path)


def test_without_a_manifest_maps_pair_with_their_image_by_name(folder):
    with_manifest = read_pngpairs(folder)
    (folder / "list.csv").unlink()
    (folder / "P01-0027-ocontour-manual.png").rename(folder / "P01-0027_ocontour.png")  # other spellings pair too
    save(folder / "P03-0060.png", np.zeros(SHAPE, dtype=np.uint8))  # an image without maps
    (folder / "P04-0080-icontour-manual.png").write_bytes((folder / "P01-0020-icontour-manual.png").read_bytes())
    assert looks_like_pngpairs(folder) and detect_format(folder) == "pngpairs"
    report = read_pngpairs(folder)
    assert [s.id for s in report.samples] == [s.id for s in with_manifest.samples]
    for got, want in zip(report.samples, with_manifest.samples, strict=True):
        assert (got.phase, got.slice) == (want.phase, want.slice)
        assert all(np.array_equal(got.masks[k], want.masks[k]) for k in ("endo", "epi"))
    assert report.unmatched_images == [str(folder / "P03-0060.png")]
    assert report.unmatched_contours == [str(folder / "P04-0080-icontour-manual.png")]
    # an automatic map is no ground truth; a CSV that is no manifest does not stop pairing; case is ignored
    (folder / "P01-0020-icontour-manual.png").rename(folder / "p01-0020-ICONTOUR-manual.png")
    save(folder / "P03-0060-icontour-auto.png", np.zeros(SHAPE, dtype=np.uint8))
    (folder / "stats.csv").write_text("name,value\na,1\n")
    report = read_pngpairs(folder)
    assert [s.id for s in report.samples] == [s.id for s in with_manifest.samples]
    assert report.unmatched_images == [str(folder / "P03-0060.png")]
    assert any("1 automatic contour map(s) (-auto) not read" in note for note in report.notes)
    assert any("no CSV is a manifest (stats.csv)" in note for note in report.notes)
    save(folder / "P01-0020.jpg", np.zeros(SHAPE, dtype=np.uint8))
    with pytest.raises(DataError, match="a second image named P01-0020"):
        read_pngpairs(folder)


def test_empty_manifest_and_unknown_header_are_errors(tmp_path):
    (tmp_path / "list.csv").write_text("")
    with pytest.raises(DataError, match="list.csv: the manifest is empty"):
        read_pngpairs(tmp_path)
    (tmp_path / "list.csv").write_text(HEADER + "\n")
    with pytest.raises(DataError, match="list.csv: the manifest has a header but no rows"):
        read_pngpairs(tmp_path)
    (tmp_path / "list.csv").write_text("name,size\na.png,3\n")
    with pytest.raises(DataError, match="lacks an image column or a contour column"):
        read_pngpairs(tmp_path)


def test_several_csv_files_need_an_explicit_manifest(folder):
    write_manifest(folder, ["P02-0040.png,P02-0040-icontour-manual.png,P02-0040-ocontour-manual.png"], name="other.csv")
    with pytest.raises(DataError, match="several CSV files"):
        read_pngpairs(folder)
    assert [s.id for s in read_pngpairs(folder, manifest="other.csv").samples] == ["P02-0040"]


def test_manifest_naming_a_missing_file(folder):
    (folder / "P01-0027-ocontour-manual.png").unlink()
    with pytest.raises(DataError) as error:
        read_pngpairs(folder)
    assert error.value.path == str(folder / "P01-0027-ocontour-manual.png")
    assert "is listed in list.csv (row 3) but does not exist" in str(error.value)


def test_unreadable_png(folder):
    (folder / "P02-0040.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError) as error:
        read_pngpairs(folder)
    assert error.value.path == str(folder / "P02-0040.png")
    assert "cannot be read as an image" in str(error.value)


def test_map_whose_size_differs_from_its_image(folder):
    save(folder / "P01-0020-icontour-manual.png", rectangle_outline((30, 20), 8, 6, 13, 10))
    with pytest.raises(DataError) as error:
        read_pngpairs(folder)
    assert error.value.path == str(folder / "P01-0020-icontour-manual.png")
    assert "contour map is 30 x 20 but its image P01-0020.png is 24 x 20" in str(error.value)


def test_mixed_image_sizes_in_one_patient(folder):
    rows = [write_pair(folder, "P01-0040"), write_pair(folder, "P01-0047", shape=(26, 20))]
    rows.append(write_pair(folder, "P01-0060", shape=(26, 20)))
    manifest = folder / "list.csv"
    manifest.write_text(manifest.read_text() + "\n".join(rows) + "\n")
    with pytest.raises(DataError) as error:
        read_pngpairs(folder)
    assert error.value.path == str(folder / "P01-0047.png")
    assert "image is 26 x 20 but the other images of patient P01 are 24 x 20" in str(error.value)
    report = read_pngpairs(folder, skip_bad=True)
    assert [entry["path"] for entry in report.skipped] == [str(folder / "P01-0047.png"), str(folder / "P01-0060.png")]
    assert [s.id for s in report.samples] == ["P01-0020", "P01-0027", "P01-0040", "P02-0040"]


def test_an_image_listed_twice(folder):
    manifest = folder / "list.csv"
    manifest.write_text(manifest.read_text() + "P01-0020.png,P01-0020-icontour-manual.png,\n")
    with pytest.raises(DataError, match=r"list.csv: row 5 lists P01-0020.png again \(first in row 2\)"):
        read_pngpairs(folder)


def test_skip_bad_records_bad_files_and_keeps_the_rest(folder):
    (folder / "P02-0040.png").write_bytes(b"not a png at all")
    (folder / "P01-0027-ocontour-manual.png").unlink()
    report = read_pngpairs(folder, skip_bad=True)
    # A missing map costs its label only: P01-0027 keeps its endo map.
    assert [(s.id, sorted(s.masks)) for s in report.samples] == [("P01-0020", ["endo", "epi"]), ("P01-0027", ["endo"])]
    assert any("P01-0027.png: its epi contour map was skipped" in note for note in report.notes)
    skipped = {entry["path"]: entry["reason"] for entry in report.skipped}
    assert set(skipped) == {str(folder / "P02-0040.png"), str(folder / "P01-0027-ocontour-manual.png")}
    assert "cannot be read as an image" in skipped[str(folder / "P02-0040.png")]


def test_files_not_in_the_manifest_are_noted(folder):
    write_pair(folder, "P03-0060")
    report = read_pngpairs(folder)
    assert len(report.samples) == 3
    assert report.notes == [f"{folder}: 3 image file(s) not listed in list.csv: P03-0060-icontour-manual.png, "
                            "P03-0060-ocontour-manual.png, P03-0060.png"]


def test_looks_like_pngpairs(folder, tmp_path):
    assert looks_like_pngpairs(folder)
    assert not looks_like_pngpairs(folder / "P01-0020.png")
    assert not looks_like_pngpairs(tmp_path / "missing")


@pytest.fixture(scope="module")
def rvsc_png(shared_data):
    return read_pngpairs(shared_data / "rvsc-train-png")


def test_real_rvsc_png_counts(rvsc_png):
    assert len(rvsc_png.samples) == 243
    per_patient = Counter(s.patient for s in rvsc_png.samples)
    assert len(per_patient) == 16 and per_patient["P03"] == 11 and per_patient["P13"] == 18
    assert Counter(s.phase for s in rvsc_png.samples) == {"ED": 134, "ES": 109}
    assert {s.shape for s in rvsc_png.samples} == {(128, 108)}
    assert not (rvsc_png.unfillable or rvsc_png.skipped or rvsc_png.unmatched_images or rvsc_png.notes)


def test_real_rvsc_png_masks(rvsc_png):
    assert all(set(s.masks) == {"endo", "epi"} for s in rvsc_png.samples)
    endo_fraction = np.mean([s.masks["endo"].mean() for s in rvsc_png.samples])
    assert 0.048 <= endo_fraction <= 0.056
    # The epicardium encloses the cavity: on 242 of 243 slices exactly, on the last but for 1 px.
    endo_outside_epi = sorted(int((s.masks["endo"] & ~s.masks["epi"]).sum()) for s in rvsc_png.samples)
    assert endo_outside_epi.count(0) >= 242 and endo_outside_epi[-1] <= 2
    assert all(s.masks["epi"].sum() > s.masks["endo"].sum() for s in rvsc_png.samples)
    intensities = np.concatenate([s.image.ravel() for s in rvsc_png.samples[:20]])
    assert intensities.min() >= 120 and intensities.max() <= 255


def test_maps_that_do_not_nest_are_noted(folder):
    # The i-map of P01-0020 replaced by a disc far from its o-contour (misaligned or swapped maps).
    save(folder / "P01-0020-icontour-manual.png", rectangle_outline(SHAPE, 0, 0, 4, 4))
    report = read_pngpairs(folder)
    assert any(note.startswith("P01-0020:") and "do not nest" in note for note in report.notes)

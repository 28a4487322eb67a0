"""``rvseg prepare`` / ``inspect`` through the CLI: the counts of the real sets, options, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from helpers import crop_dicom, make_patient_copy

from rvseg.cli import main
from rvseg.data.dataset import load_dataset
from rvseg.data.phantom import write_phantom
from rvseg.data.prepare import PrepareOptions
from rvseg.data.splits import split_patients, training_share
from rvseg.data.targets import encode_targets
from rvseg.errors import ConfigError


def prepare_json(capsys, src, out, *flags) -> dict:
    code = main(["prepare", str(src), "--out", str(out), "--json", *flags])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_rvsc_png_set_counts(shared_data, tmp_path, capsys):
    summary = prepare_json(capsys, shared_data / "rvsc-train-png", tmp_path / "d")
    assert summary["format"] == "pngpairs"
    assert (summary["n_samples"], summary["n_patients"]) == (243, 16)
    assert summary["labels"]["endo"]["count"] == summary["labels"]["epi"]["count"] == 243
    # The data README says "about 5.2%" (open outlines left unfilled give 5.19%); filling them gives 5.45%.
    assert 0.050 <= summary["labels"]["endo"]["mean_foreground_fraction"] <= 0.056
    assert summary["phases"] == {"ED": 134, "ES": 109, "unknown": 0}
    assert summary["unfillable"] == [] and summary["unmatched"] == {"images": [], "contours": []}
    data = load_dataset(tmp_path / "d")
    assert data.images.shape == (243, 1, 128, 108) and data.masks.shape == (243, 2, 128, 108)
    assert data.rows[0]["spacing_mm"] == ""  # unknown for this set, never invented


def test_sunnybrook_counts(shared_data, tmp_path, capsys):
    summary = prepare_json(capsys, shared_data / "sunnybrook-subset", tmp_path / "d")
    assert summary["format"] == "sunnybrook"
    assert summary["n_samples"] == 96 and summary["n_patients"] == 5
    assert summary["labels"]["endo"]["count"] == 96 and summary["labels"]["epi"]["count"] == 46
    assert len(summary["unmatched"]["images"]) == 10 and summary["unmatched"]["contours"] == []
    data = load_dataset(tmp_path / "d")
    assert data.present[:, 1].sum() == 46  # an absent epi is recorded as absent, not as empty
    named = prepare_json(capsys, shared_data / "sunnybrook-subset", tmp_path / "named", "--labels", "lv, myo")
    assert list(named["labels"]) == ["lv", "myo"]


def test_rvsc_native_counts_and_geometry(shared_data, tmp_path, capsys):
    summary = prepare_json(capsys, shared_data / "rvsc-native", tmp_path / "d")
    assert summary["n_samples"] == 3 and len(summary["unmatched"]["images"]) == 21
    assert summary["phases"] == {"ED": 2, "ES": 1, "unknown": 0}
    data = load_dataset(tmp_path / "d")
    row = data.rows[data.column("id").index("P09-0020")]
    assert float(row["spacing_mm"]) == pytest.approx(0.7014, abs=1e-4)
    assert int(row["area_px_endo"]) == pytest.approx(7106.5, rel=0.01)
    assert data.masks[0, 1][data.masks[0, 0] > 0].all()  # epi contains endo


def test_a_set_with_no_contour_of_one_label_prepares(shared_data, tmp_path, capsys):
    """Endo-only data (no o-contour anywhere) is valid input: the label counts 0, no traceback."""
    root = make_patient_copy(tmp_path, shared_data / "rvsc-native")
    patient = root / "patient09"
    for path in (patient / "P09contours-manual").glob("*-ocontour-manual.txt"):
        path.unlink()
    listed = (patient / "P09list.txt").read_text().splitlines(keepends=True)
    (patient / "P09list.txt").write_text("".join(line for line in listed if "ocontour" not in line))
    summary = prepare_json(capsys, root, tmp_path / "d")
    assert summary["labels"]["epi"] == {"count": 0, "mean_foreground_fraction": 0.0}
    assert summary["labels"]["endo"]["count"] == 3


def test_resize_updates_spacing_and_keeps_masks_binary(shared_data, tmp_path, capsys):
    prepare_json(capsys, shared_data / "rvsc-native", tmp_path / "d", "--size", "216", "216", "--channels", "3")
    data = load_dataset(tmp_path / "d")
    assert data.images.shape == (3, 3, 216, 216)
    assert np.array_equal(data.images[:, 0], data.images[:, 2])
    assert set(np.unique(data.masks)) <= {0, 1}
    row = data.rows[0]
    assert float(row["spacing_mm"]) == pytest.approx(0.7014 * 256 / 216, rel=1e-3)
    assert float(row["spacing_col_mm"]) == pytest.approx(0.7014, rel=1e-3)
    assert (row["orig_height"], row["orig_width"]) == ("256", "216")
    # nearest-neighbour resizing keeps the area in mm^2
    area_mm2 = int(row["area_px_endo"]) * float(row["spacing_mm"]) * float(row["spacing_col_mm"])
    assert area_mm2 == pytest.approx(7111 * 0.7014**2, rel=0.02)


def test_phantom_counts(tmp_path, capsys):
    phantom = write_phantom(tmp_path / "ph", patients=2, slices=3, frames=4)
    summary = prepare_json(capsys, tmp_path / "ph", tmp_path / "d")
    assert summary["format"] == "rvsc"
    assert summary["n_samples"] == phantom.annotated_samples and summary["n_patients"] == 2
    assert summary["phases"]["ED"] == summary["phases"]["ES"] == phantom.annotated_samples // 2
    assert len(summary["unmatched"]["images"]) == 2 * 3 * 4 - phantom.annotated_samples


def test_acdc_volumes_prepare_with_named_labels(tmp_path, capsys):
    patient = tmp_path / "acdc" / "patient001"
    patient.mkdir(parents=True)
    (patient / "Info.cfg").write_text("ED: 1\nES: 7\nGroup: NOR\n")
    rng = np.random.default_rng(0)
    for frame in (1, 7):
        image = rng.normal(100, 10, (40, 36, 3)).astype(np.float32)
        labels = np.zeros((40, 36, 3), np.uint8)
        labels[10:20, 5:15, :] = 1
        labels[12:30, 18:30, 1:] = 2
        labels[15:25, 21:27, 1:] = 3
        affine = np.diag([1.5, 1.6, 10.0, 1.0])
        nib.save(nib.Nifti1Image(image, affine), patient / f"patient001_frame{frame:02d}.nii.gz")
        nib.save(nib.Nifti1Image(labels, affine), patient / f"patient001_frame{frame:02d}_gt.nii.gz")
    summary = prepare_json(capsys, tmp_path / "acdc", tmp_path / "d")
    assert summary["format"] == "acdc" and summary["n_samples"] == 6
    assert set(summary["labels"]) == {"rv", "myo", "lv"}
    assert summary["phases"] == {"ED": 3, "ES": 3, "unknown": 0}
    data = load_dataset(tmp_path / "d")
    assert data.masks[:, data.labels.index("rv")].sum(axis=(1, 2)).tolist() == [100] * 6
    assert float(data.rows[0]["spacing_mm"]) == 1.5 and float(data.rows[0]["spacing_col_mm"]) == 1.6


def test_inspect_json_and_montage(shared_data, tmp_path, capsys):
    prepare_json(capsys, shared_data / "rvsc-native", tmp_path / "d")
    assert main(["inspect", str(tmp_path / "d"), "--json", "--montage", str(tmp_path / "m.png")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_samples"] == 3 and summary["labels"]["endo"]["count"] == 3
    assert 0.1 < summary["labels"]["endo"]["mean_foreground_fraction"] < 0.2  # 7106 px of 256 x 216
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["inspect", str(tmp_path / "d"), "--montage", str(tmp_path / "m0.png"), "--n", "0"]) == 2
    assert "--n must be at least 1, not 0" in capsys.readouterr().err


def test_inspect_checks_a_study_without_writing_anything(shared_data, tmp_path, capsys, monkeypatch):
    """`rvseg inspect STUDY` reads any layout as prepare does: the same summary, and nothing left on disk."""
    prepared = prepare_json(capsys, shared_data / "sunnybrook-subset", tmp_path / "d")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr("tempfile.tempdir", None)  # TMPDIR is read again
    study = shared_data / "sunnybrook-subset"
    assert main(["inspect", str(study), "--json", "--montage", str(tmp_path / "m.png")]) == 0
    checked = json.loads(capsys.readouterr().out)
    assert checked["content_hash"] == json.loads((tmp_path / "d" / "dataset.json").read_text())["content_hash"]
    assert {key: checked[key] for key in prepared} == prepared  # 96 samples, the notes, the unmatched images
    assert (tmp_path / "m.png").is_file() and list(scratch.iterdir()) == []


def test_inspect_names_a_bad_file_of_a_study(shared_data, tmp_path, capsys):
    root = make_patient_copy(tmp_path, shared_data / "rvsc-native")
    path, _ = corrupt_dicom(root)
    assert main(["inspect", str(root)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"rvseg: {path}:") and "\n" not in error
    assert main(["inspect", str(root), "--skip-bad"]) == 1
    out = capsys.readouterr().out
    assert "2 samples of 1 patient(s) (rvsc)" in out and f"skipped {path}" in out
    assert main(["inspect", str(tmp_path / "nothing-here")]) == 2
    assert "nothing-here" in capsys.readouterr().err
    # A prepared set made with skips inspects as a set (exit 0); the reader options are for studies.
    assert main(["prepare", str(root), "--out", str(tmp_path / "d"), "--skip-bad"]) == 1
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "d")]) == 0
    assert main(["inspect", str(tmp_path / "d"), "--format", "acdc"]) == 2
    assert "apply to a study; this is a prepared data set" in capsys.readouterr().err


@pytest.mark.parametrize("damage, problem", [
    ("labels", "dataset.json lacks one of labels"),
    ("column", "samples.csv lacks the column(s) height"),
    ("masks", "do not fit 2 label(s)"),
])
def test_damaged_prepared_set_gives_one_message_and_exit_2(shared_data, tmp_path, capsys, damage, problem):
    prepare_json(capsys, shared_data / "rvsc-native", tmp_path / "d")
    if damage == "labels":
        meta = json.loads((tmp_path / "d" / "dataset.json").read_text())
        del meta["labels"]
        (tmp_path / "d" / "dataset.json").write_text(json.dumps(meta))
    elif damage == "column":
        table = (tmp_path / "d" / "samples.csv").read_text()
        (tmp_path / "d" / "samples.csv").write_text(table.replace(",height,", ",h,", 1))
    else:
        np.save(tmp_path / "d" / "masks.npy", np.load(tmp_path / "d" / "masks.npy")[:, :1])
    assert main(["inspect", str(tmp_path / "d"), "--json"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"rvseg: {tmp_path / 'd'}: prepared data set is damaged") and problem in error
    assert "\n" not in error


def test_mask_styles_encode_targets():
    import torch

    masks = torch.zeros(1, 1, 7, 7)
    masks[..., 1:6, 1:6] = 1
    outline = encode_targets(masks, "outline")
    assert outline.sum() == 16 and outline[0, 0, 3, 3] == 0  # the 5 x 5 square's ring of 16 pixels
    grey = encode_targets(masks, "grey")
    assert set(grey.unique().tolist()) == {0.5, 1.0}
    assert torch.equal(encode_targets(masks, "filled"), masks)


def test_a_mask_style_that_is_no_name_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"--mask-style must be one of filled, outline, grey, not \['grey'\]"):
        PrepareOptions(mask_style=["grey"]).validate()


def test_mask_style_is_recorded(shared_data, tmp_path, capsys):
    prepare_json(capsys, shared_data / "rvsc-native", tmp_path / "d", "--mask-style", "outline")
    assert load_dataset(tmp_path / "d").mask_style == "outline"


# --- bad input: one message naming the file, exit code 2, no output folder ---------------------


def corrupt_dicom(root: Path) -> tuple[Path, str]:
    path = root / "patient09" / "P09dicom" / "P09-0022.dcm"
    path.write_bytes(path.read_bytes()[:60000])
    return path, "cannot decode the DICOM pixel data"


def corrupt_frame_without_contours(root: Path) -> tuple[Path, str]:
    """P09-0021 carries no contour: read by its header, its cut pixel data is still found."""
    path = root / "patient09" / "P09dicom" / "P09-0021.dcm"
    path.write_bytes(path.read_bytes()[:60000])
    return path, "the file is truncated"


def no_pixel_data(root: Path) -> tuple[Path, str]:
    path = root / "patient09" / "P09dicom" / "P09-0020.dcm"
    dataset = pydicom.dcmread(path)
    del dataset.PixelData
    dataset.save_as(path)
    return path, "holds no pixel data"


def contour_line(text: str, problem: str):
    def mutate(root: Path) -> tuple[Path, str]:
        path = root / "patient09" / "P09contours-manual" / "P09-0022-ocontour-manual.txt"
        path.write_text(path.read_text() + text + "\n")
        return path, problem
    return mutate


def too_few_points(root: Path) -> tuple[Path, str]:
    path = root / "patient09" / "P09contours-manual" / "P09-0020-icontour-manual.txt"
    path.write_text("100.0 60.0\n101.0 61.0\n")
    return path, "at least 3 points"


def escaping_list_entry(root: Path) -> tuple[Path, str]:
    path = root / "patient09" / "P09list.txt"
    path.write_text(path.read_text() + r".\patient09\..\..\outside\P09-0020-icontour-manual.txt" + "\r\n")
    return path, "points outside the patient folder"


def mixed_sizes(root: Path) -> tuple[Path, str]:
    path = root / "patient09" / "P09dicom" / "P09-0021.dcm"
    crop_dicom(path, 128, 108)
    return path, "but the other images of patient P09 are 256 x 216"


@pytest.mark.parametrize("mutate", [
    corrupt_dicom, corrupt_frame_without_contours, no_pixel_data, contour_line("12.5 abc", "is malformed"),
    contour_line("nan 40.0", "non-finite coordinate"), contour_line("400.0 900.0", "outside the 256 x 216 image"),
    too_few_points, escaping_list_entry, mixed_sizes,
], ids=["corrupt-dicom", "corrupt-frame-without-contours", "no-pixel-data", "malformed-line", "nan", "far-outside",
        "too-few-points", "list-escape", "mixed-sizes"])
def test_bad_input_gives_one_message_and_exit_2(shared_data, tmp_path, capsys, mutate):
    root = make_patient_copy(tmp_path, shared_data / "rvsc-native")
    path, problem = mutate(root)
    out = tmp_path / "out"
    code = main(["prepare", str(root), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"rvseg: {path}") and problem in err and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))  # nothing half-written


def test_empty_folder_lists_what_was_looked_for(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["prepare", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "empty") in err and "matches no known layout" in err
    for layout in ("RVSC", "Sunnybrook", "contour maps", "ACDC"):
        assert layout in err


def test_skip_bad_records_the_file_and_exits_1(shared_data, tmp_path, capsys):
    root = make_patient_copy(tmp_path, shared_data / "rvsc-native")
    path, _ = corrupt_dicom(root)
    code = main(["prepare", str(root), "--out", str(tmp_path / "out"), "--skip-bad", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [s["path"] for s in summary["skipped"]] == [str(path)]
    assert summary["n_samples"] == 2  # the two other annotated frames


def test_existing_output_needs_force(shared_data, tmp_path, capsys):
    prepare_json(capsys, shared_data / "rvsc-native", tmp_path / "d")
    assert main(["prepare", str(shared_data / "rvsc-native"), "--out", str(tmp_path / "d")]) == 2
    assert "--force" in capsys.readouterr().err
    prepare_json(capsys, shared_data / "rvsc-native", tmp_path / "d", "--force", "--size", "64", "64")
    assert load_dataset(tmp_path / "d").images.shape[-2:] == (64, 64)


def test_force_replaces_an_earlier_output_but_never_a_folder_of_other_files(shared_data, tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes\n")
    (mine / "sub" / "thesis.tex").write_text("\\begin{document}\n")
    outputs = tmp_path / "data"
    prepare_json(capsys, shared_data / "rvsc-native", outputs / "a")
    before = sorted(tmp_path.rglob("*"))
    for out in (mine, outputs):  # a folder of the user's files; a folder holding outputs, not one itself
        assert main(["prepare", str(shared_data / "rvsc-native"), "--out", str(out), "--force"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no rvseg output (no dataset.json or summary.json in it)" in err
    assert sorted(tmp_path.rglob("*")) == before
    prepare_json(capsys, shared_data / "rvsc-native", outputs / "a", "--force")  # an earlier output: replaced


def test_force_never_replaces_the_source(shared_data, tmp_path, capsys, monkeypatch):
    root = make_patient_copy(tmp_path, shared_data / "rvsc-native")
    (tmp_path / "alias").symlink_to(root)
    before = sorted(root.rglob("*"))
    for src, out in ((root / "patient09", root / "patient09"), (root, tmp_path), (tmp_path / "alias", root)):
        assert main(["prepare", str(src), "--out", str(out), "--force"]) == 2
        assert "would delete that input" in capsys.readouterr().err
    # "." and ".." are the current folder and the one above it, never replaced.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine\n")
    monkeypatch.chdir(elsewhere)
    for out in (".", "..", "sub/.."):
        assert main(["prepare", str(root), "--out", out, "--force"]) == 2
        assert "holds the current folder" in capsys.readouterr().err
    assert sorted(root.rglob("*")) == before and (elsewhere / "keep.txt").read_text() == "mine\n"


def test_bad_option_values(shared_data, tmp_path, capsys):
    for flags, problem in ((["--channels", "2"], "--channels"), (["--mask-style", "dotted"], "--mask-style"),
                           (["--format", "dicomdir"], "unknown format")):
        assert main(["prepare", str(shared_data / "rvsc-native"), "--out", str(tmp_path / "o"), *flags]) == 2
        assert problem in capsys.readouterr().err


# --- patient-wise splits ------------------------------------------------------------------------

PATIENTS = [f"P{i:02d}" for i in range(1, 17)]


def test_explicit_validation_patients():
    split = split_patients(PATIENTS, val_patients=["P13", "P14", "P15", "P16"])
    assert split.val == ["P13", "P14", "P15", "P16"] and len(split.train) == 12
    with pytest.raises(ConfigError, match="P99"):
        split_patients(PATIENTS, val_patients=["P99"])


def test_folds_partition_the_patients():
    folds = [split_patients(PATIENTS, fold=k, folds=4, seed=3) for k in range(4)]
    assert sorted(p for f in folds for p in f.val) == PATIENTS
    for f in folds:
        assert not set(f.train) & set(f.val) and len(f.val) == 4
    assert folds[0].val != split_patients(PATIENTS, fold=0, folds=4, seed=4).val


def test_default_split_is_a_seeded_fifth():
    split = split_patients(PATIENTS, seed=0)
    assert len(split.val) == 3 and split == split_patients(PATIENTS, seed=0)
    assert not set(split.train) & set(split.val)


def test_training_share_draws_within_each_patient():
    indices = np.arange(30)
    patients = ["A"] * 10 + ["B"] * 20
    kept = training_share(indices, patients, 0.4, seed=0)
    assert len(kept) == 4 + 8 and (kept < 10).sum() == 4
    assert np.array_equal(kept, training_share(indices, patients, 0.4, seed=0))


def test_training_shares_of_one_seed_are_nested():
    """The study's 100/80/70/40 % comparison should change how many slices train, not which."""
    indices = np.arange(100, 160)
    patients = [f"P{k // 12:02d}" for k in range(60)]
    shares = [set(training_share(indices, patients, share, seed=3).tolist()) for share in (0.4, 0.7, 0.8, 1.0)]
    assert shares[0] < shares[1] < shares[2] < shares[3]
    assert shares[0] != set(training_share(indices, patients, 0.4, seed=4).tolist())


def test_folds_take_precedence_over_a_configured_list():
    split = split_patients(PATIENTS, val_patients=["P13", "P14"], fold=1, folds=4, seed=3)
    assert split == split_patients(PATIENTS, fold=1, folds=4, seed=3)


def test_a_closed_output_pipe_ends_quietly(tmp_path, monkeypatch, capsys):
    """`rvseg inspect D --json | head` closes the pipe early: no 'rvseg: Broken pipe', exit 0."""
    import io
    import sys

    import rvseg.data.phantom

    def closed_pipe(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(rvseg.data.phantom, "write_phantom", closed_pipe)
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # restored after the test, whatever main sets
    assert main(["phantom", "--out", str(tmp_path / "p")]) == 0
    assert capsys.readouterr().err == ""


def test_json_output_is_standard_json(capsys):
    """A sweep's best record without a test set holds test_dice NaN: printed as null, not NaN."""
    from rvseg.cli import print_json

    print_json({"best": {"test_dice": float("nan"), "runs": [1.0, float("nan")]}})
    text = capsys.readouterr().out
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON output")) == {
        "best": {"test_dice": None, "runs": [1.0, None]}}


def test_the_content_hash_is_the_data_not_where_it_was_read_from(shared_data, tmp_path, capsys):
    """One study prepared from two copies in different folders is the same data (a sweep or a resumed
    run continues on a machine that keeps it elsewhere); a changed image is not."""
    import shutil

    import imageio.v3 as iio

    copies = [tmp_path / "a" / "study", tmp_path / "b" / "elsewhere"]
    for copy in copies:
        copy.mkdir(parents=True)
        for file in (shared_data / "rvsc-train-png").glob("P01-*"):
            shutil.copy(file, copy)
    def content_hash(copy, out):
        prepare_json(capsys, copy, out)
        return json.loads((out / "dataset.json").read_text())["content_hash"]

    hashes = [content_hash(copy, tmp_path / f"d{i}") for i, copy in enumerate(copies)]
    assert hashes[0] == hashes[1]
    assert (tmp_path / "d0" / "samples.csv").read_text() != (tmp_path / "d1" / "samples.csv").read_text()

    image = copies[1] / "P01-0080.png"
    pixels = iio.imread(image)
    pixels[0, 0] = 255 - pixels[0, 0]
    iio.imwrite(image, pixels)
    assert content_hash(copies[1], tmp_path / "d2") != hashes[0]

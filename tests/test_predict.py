"""rvseg predict and rvseg.inference: sources, geometry, ensembles, TTA, contours, volumes, exit codes."""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from scipy import ndimage
from skimage.io import imread, imsave
from torch import nn

from rvseg.cli import main
from rvseg.data.acdc import read_acdc
from rvseg.data.dicom import read_dicom
from rvseg.data.phantom import write_phantom
from rvseg.data.prepare import PrepareOptions, prepare
from rvseg.data.rvsc import read_rvsc
from rvseg.data.sources import InputImage, read_source, unique_ids
from rvseg.errors import ConfigError, DataError
from rvseg.inference import Predictor, combine
from rvseg.metrics import segmentation_metrics
from rvseg.postprocess import postprocess_scores
from rvseg.predict import NiftiMasks, predict, scale_notes, segmenting_units, stack_instants, write_volumes
from rvseg.train.checkpoint import load_checkpoint, save_checkpoint
from rvseg.train.config import TrainConfig
from rvseg.train.loop import train
from rvseg.volumes import volume_errors

MODEL_SIZE = (64, 56)
PHANTOM_PATIENTS, PHANTOM_SLICES, PHANTOM_FRAMES = 3, 3, 4


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run this module's tiny models on one thread, restored afterwards.

    At 64 x 56 with 8 channels the OpenMP hand-offs of a second thread cost more than they save,
    several times more on a machine whose cores are busy with other work.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("predict") / "phantom"
    write_phantom(folder, patients=PHANTOM_PATIENTS, slices=PHANTOM_SLICES, frames=PHANTOM_FRAMES, seed=1)
    return folder


@pytest.fixture(scope="module")
def prepared(phantom) -> Path:
    out = phantom.parent / "prepared"
    prepare(phantom, out, PrepareOptions(size=MODEL_SIZE))
    return out


@pytest.fixture(scope="module")
def checkpoint(prepared) -> Path:
    """A tiny U-Net trained for a few seconds at 64 x 56; it predicts non-empty, imperfect masks."""
    run = prepared.parent / "run"
    config = TrainConfig(width=8, depth=2, epochs=8, batch_size=8, lr=0.01, device="cpu", augment=False,
                         val_patients=["P03"])
    train(prepared, run, config, verbose=False)
    return run / "best.pt"


@pytest.fixture(scope="module")
def patient09_prediction(shared_data, checkpoint, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("p09") / "pred"
    return out, predict([checkpoint], shared_data / "rvsc-native" / "patient09", out)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return segmentation_metrics(a, b, None)["dice"]


class BrightRegions(nn.Module):
    """A stand-in network with a known answer: every pixel brighter than mid-grey is foreground."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return 40.0 * (images[:, :1] - 0.5)


def known_predictor(**options) -> Predictor:
    prepare_options = {"size": MODEL_SIZE, "channels": 1, "normalize": "percentile", "clahe": False}
    return Predictor(models=[BrightRegions()], labels=["endo"], prepare=prepare_options, **options)


def discs_image(shape) -> tuple[np.ndarray, np.ndarray]:
    """A float32 (H, W) image of three bright discs (two near opposite corners) and their bool mask."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    truth = np.zeros(shape, dtype=bool)
    for centre in [(0.17 * shape[0] + 0.3, 0.2 * shape[1] + 0.2), (0.82 * shape[0] - 0.4, 0.8 * shape[1] + 0.1),
                   (0.45 * shape[0], 0.55 * shape[1])]:
        truth |= (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= (0.12 * min(shape)) ** 2
    return np.where(truth, 1000.0, 100.0).astype(np.float32), truth


def shifted_checkpoint(source: Path, target: Path, bias_shift: float) -> Path:
    """A copy of a checkpoint whose output logits are all ``bias_shift`` higher."""
    state = load_checkpoint(source)
    state["model"]["head.bias"] = state["model"]["head.bias"] + bias_shift
    save_checkpoint(target, state)
    return target


# ---------------------------------------------------------------- the shared RVSC data


def test_predict_on_rvsc_patient_folder(patient09_prediction):
    out, summary = patient09_prediction
    assert summary["source_kind"] == "rvsc" and summary["n_images"] == 24 and summary["skipped"] == []
    rows = read_csv(out / "predictions.csv")
    assert [row["id"] for row in rows] == [f"P09-{k:04d}" for k in range(24)]
    # The model works at 64 x 56; every output is at the DICOMs' own 256 x 216.
    for row in rows:
        assert (int(row["height"]), int(row["width"])) == (256, 216)
        mask = imread(out / "masks" / f"{row['id']}.png")
        assert mask.shape == (256, 216) and set(np.unique(mask)) <= {0, 255}
        assert int(row["area_px_endo"]) == int((mask > 0).sum())
        assert float(row["area_mm2_endo"]) == pytest.approx((mask > 0).sum() * 0.7014 ** 2, rel=1e-3)
        assert imread(out / "overlays" / f"{row['id']}.png").shape == (256, 216, 3)
    written = sorted(path.name for path in (out / "contours").iterdir())
    assert written == sorted(row["contour_endo"] for row in rows if row["contour_endo"])
    assert all(name.startswith("P09-") and name.endswith("-icontour-auto.txt") for name in written)
    assert read_csv(out / "skipped.csv") == []


def test_predict_on_an_rvsc_test_set_folder(checkpoint, shared_data, tmp_path):
    frames = sorted((shared_data / "rvsc-native" / "patient09" / "P09dicom").glob("*.dcm"))[20:23]
    for set_name in ("Test1Set", "Test2Set"):
        (tmp_path / "TestSet" / set_name / "patient09" / "P09dicom").mkdir(parents=True)
    for path in frames:
        shutil.copy(path, tmp_path / "TestSet" / "Test1Set" / "patient09" / "P09dicom")
    summary = predict([checkpoint], tmp_path / "TestSet" / "Test1Set", tmp_path / "one")
    assert summary["source_kind"] == "rvsc" and summary["n_images"] == 3
    with pytest.raises(DataError, match="patient P09 was already read from"):  # in two sets: ambiguous
        predict([checkpoint], tmp_path / "TestSet", tmp_path / "both")
    shutil.rmtree(tmp_path / "TestSet" / "Test2Set")
    assert predict([checkpoint], tmp_path / "TestSet", tmp_path / "all")["n_images"] == 3


def test_patient09_volumes_follow_the_documented_rules(patient09_prediction):
    out, summary = patient09_prediction
    rows = read_csv(out / "volumes.csv")
    images = [row for row in rows if row["level"] == "image"]
    assert len(images) == 24
    # Slice 22.45 holds frames 0-19, slices 30.85 and 39.25 two frames each: ED and ES per slice, the
    # largest and the smallest area.
    for location in {row["slice_location"] for row in images}:
        frames = sorted((row for row in images if row["slice_location"] == location), key=lambda r: r["id"])
        ed = max(frames, key=lambda row: float(row["area_mm2"]))
        es = min((row for row in frames if row is not ed), key=lambda row: float(row["area_mm2"]))
        assert [row["id"] for row in frames if row["phase"] == "ED"] == [ed["id"]]
        assert [row["id"] for row in frames if row["phase"] == "ES"] == [es["id"]]
    (stack,) = [row for row in rows if row["level"] == "stack"]
    assert stack["es_rule"] == "min-area-per-slice" and float(stack["slice_spacing_mm"]) == pytest.approx(8.4)
    ed_area = sum(float(row["area_mm2"]) for row in images if row["phase"] == "ED")
    assert float(stack["ed_volume_ml"]) == pytest.approx(ed_area * 8.4 / 1000, rel=1e-4)
    assert summary["volumes"]["P09"]["ed_volume_ml"] == pytest.approx(float(stack["ed_volume_ml"]), rel=1e-4)
    assert float(stack["stroke_volume_ml"]) == pytest.approx(
        float(stack["ed_volume_ml"]) - float(stack["es_volume_ml"]), rel=1e-4)
    assert float(stack["ef_percent"]) == pytest.approx(
        100 * float(stack["stroke_volume_ml"]) / float(stack["ed_volume_ml"]), rel=1e-4)


def test_contours_read_back_by_the_rvsc_reader_match_the_masks(patient09_prediction, shared_data, tmp_path):
    """Round trip: predict's auto contours, renamed to -manual in an RVSC patient folder, read by read_rvsc."""
    out, _ = patient09_prediction
    patient = tmp_path / "patient09"
    shutil.copytree(shared_data / "rvsc-native" / "patient09" / "P09dicom", patient / "P09dicom")
    (patient / "P09contours-manual").mkdir()
    for path in (out / "contours").iterdir():
        shutil.copy(path, patient / "P09contours-manual" / path.name.replace("-auto", "-manual"))
    report = read_rvsc(patient)
    assert len(report.samples) >= 12, "the tiny model should predict a region on most frames"
    assert not report.unfillable and not report.skipped
    for sample in report.samples:
        predicted = imread(out / "masks" / f"{sample.id}.png") > 0
        assert dice(sample.masks["endo"], predicted) >= 0.98, sample.id


def test_trained_at_64x56_predicting_a_128x108_png(shared_data, checkpoint, tmp_path):
    source = shared_data / "rvsc-train-png" / "P01-0080.png"
    summary = predict([checkpoint], source, tmp_path / "pred")
    assert summary["source_kind"] == "image" and summary["n_images"] == 1
    assert imread(tmp_path / "pred" / "masks" / "P01-0080.png").shape == (128, 108)
    assert imread(tmp_path / "pred" / "overlays" / "P01-0080.png").shape == (128, 108, 3)
    assert "volumes" not in {Path(f).name for f in summary["files"].values()}
    assert not (tmp_path / "pred" / "volumes.csv").exists()


# ---------------------------------------------------------------- geometry, ensembles, TTA


@pytest.mark.parametrize("shape", [(256, 216), (128, 108), (100, 90)])
def test_masks_are_mapped_back_aligned_with_the_image(shape):
    """A model with a known answer, run at 64 x 56, finds three bright discs at the image's own resolution.

    Discs near opposite corners are where a wrong resampling grid shows: mapping back with corner-aligned
    instead of half-pixel centres moves them by about 1 px at 256 x 216 (and is caught below).
    """
    image, truth = discs_image(shape)
    (mask,) = known_predictor().predict([image], postprocess=False)
    assert mask.shape == (1, *shape)
    assert dice(mask[0], truth) > 0.95
    if shape == (256, 216):  # the scale factor of the RVSC DICOMs; smaller images have coarser jitter
        regions, count = ndimage.label(truth)
        assert count == 3
        for k in range(1, count + 1):
            near = ndimage.binary_dilation(regions == k, iterations=3)
            offset = np.argwhere(mask[0] & near).mean(axis=0) - np.argwhere(regions == k).mean(axis=0)
            assert np.abs(offset).max() < 0.4, offset


def test_predictor_predict_takes_the_rules_by_name_and_refuses_images_that_are_not_2d():
    image, _ = discs_image((100, 90))  # three discs: three regions, of which "largest" keeps one
    predictor = known_predictor()
    raw, by_name, largest = (predictor.predict([image], postprocess=rule)[0][0] for rule in (False, "none", True))
    assert ndimage.label(raw)[1] == 3 and (by_name == raw).all() and ndimage.label(largest)[1] == 1
    assert (predictor.predict([image], postprocess="largest")[0][0] == largest).all()
    assert (predictor.predict([image], postprocess=np.bool_(True))[0][0] == largest).all()  # from a NumPy array
    with pytest.raises(ConfigError, match="postprocess"):
        predictor.predict([image], postprocess="lagest")
    channel_first = "images[1] must be a 2-D (H, W) array of intensities, not float32 of shape (1, 100, 90)"
    for bad, shown in ((image[None], channel_first), (np.stack([image] * 3, axis=-1), "(100, 90, 3)"),
                       (np.array(["a", "b"]), "<U1 of shape (2,)")):
        with pytest.raises(ConfigError, match=re.escape(shown)):
            predictor.predict([image, bad])


def test_predictor_predict_chooses_regions_through_the_stacks_it_is_given():
    # Two slices with one disc at the left, then an apical slice whose left disc is small beside a larger
    # stray one: "largest" keeps the stray disc there, "stack" the disc that continues the stack.
    rows, cols = np.mgrid[:60, :80]
    def disc(row, col, radius):
        return (rows - row) ** 2 + (cols - col) ** 2 <= radius**2
    left, stray = disc(30, 20, 12), disc(30, 62, 8)
    small_left = disc(30, 20, 6)
    images = [np.where(mask, 1000.0, 100.0).astype(np.float32) for mask in (left, left, small_left | stray)]
    predictor = known_predictor()
    largest = predictor.predict(images, postprocess="largest")[2][0]
    assert largest[30, 62] and not largest[30, 20]
    stacked = predictor.predict(images, postprocess="stack", stacks=["ED"] * 3)
    assert stacked[2][0][30, 20] and not stacked[2][0][30, 62]
    # Without stacks, or as stacks of one image each, "stack" is "largest".
    for stacks in (None, ["a", "b", "c"]):
        assert (predictor.predict(images, postprocess="stack", stacks=stacks)[2][0] == largest).all()
    with pytest.raises(ConfigError, match="stacks must give one value per image: 2 for 3 images"):
        predictor.predict(images, postprocess="stack", stacks=["ED", "ED"])
    # Any iterable gives the keys, and the positions may run the other way; a wrong value is named.
    reversed_positions = predictor.predict(images, postprocess="stack", stacks=(key for key in ["ED"] * 3),
                                           positions=[3.0, 2, np.float32(1)])
    assert (reversed_positions[2][0] == stacked[2][0]).all()
    for stacks, positions, message in ((["ED", ["x"], "ED"], None, r"stacks\[1\] must be a hashable key"),
                                       ("EDE", None, "stacks must be a list with one value per image, not str"),
                                       (["ED"] * 3, 3.0, "positions must be a list with one value per image"),
                                       (["ED"] * 3, [1, "base", 3], r"positions\[1\] must be a finite number"),
                                       (["ED"] * 3, [1, float("nan"), 3], r"positions\[1\] must be a finite"),
                                       (["ED"] * 3, [1, b"2", 3], r"positions\[1\] must be a finite"),
                                       (["ED"] * 3, [1, 10**400, 3], r"positions\[1\] must be a finite")):
        with pytest.raises(ConfigError, match=message):
            predictor.predict(images, postprocess="stack", stacks=stacks, positions=positions)


def test_mean_and_vote_combine_as_documented():
    # Three models at four pixels: [0.9, 0.4, 0.4] -> mean 0.567 (foreground), one vote of three (background);
    # [0.6, 0.6, 0.0] -> mean 0.4, two votes; [0.2, 0.2, 0.2] -> neither; [0.8, 0.9, 0.7] -> both.
    probabilities = np.array([[0.9, 0.6, 0.2, 0.8], [0.4, 0.6, 0.2, 0.9], [0.4, 0.0, 0.2, 0.7]], dtype=np.float32)
    probabilities = probabilities.reshape(3, 1, 1, 1, 4)
    assert (combine(probabilities, "mean", "filled") > 0.5).ravel().tolist() == [True, False, False, True]
    assert (combine(probabilities, "vote", "filled") > 0.5).ravel().tolist() == [False, True, False, True]
    assert combine(probabilities, "vote", "filled").ravel().tolist() == pytest.approx([1 / 3, 2 / 3, 0, 1])
    # A tie between two models is background.
    assert not (combine(probabilities[:2, ..., :1], "vote", "filled") > 0.5).any()
    # Grey targets (0.5 background, 1 foreground) are decided at 0.75.
    grey = np.array([0.8, 0.8, 0.5], dtype=np.float32).reshape(3, 1, 1, 1, 1)
    assert not (combine(grey, "mean", "grey") > 0.5).any()  # mean 0.7
    assert (combine(grey, "vote", "grey") > 0.5).all()  # two of three above 0.75


def test_outline_targets_become_filled_regions():
    rows, cols = np.mgrid[:24, :24]
    radius = np.hypot(rows - 11.5, cols - 11.5)
    outline = np.where((radius > 5.0) & (radius < 6.5), 0.9, 0.1).astype(np.float32)[None, None]  # (M, L, h, w)
    for rule in ("mean", "vote"):
        assert np.array_equal(combine(outline, rule, "outline")[0] > 0.5, radius < 6.5), rule


def test_ensembles_of_checkpoints(checkpoint, tmp_path, shared_data):
    images = [read_dicom(path).pixels for path in
              sorted((shared_data / "rvsc-native" / "patient09" / "P09dicom").glob("*.dcm"))[18:24]]
    single = Predictor.from_checkpoints([checkpoint]).predict(images, postprocess=False)
    assert sum(int(mask.sum()) for mask in single) > 0
    for rule in ("mean", "vote"):
        # A vote of one model is its own mask; one checkpoint given twice is the same as once.
        once = Predictor.from_checkpoints([checkpoint], ensemble=rule).predict(images, postprocess=False)
        twice = Predictor.from_checkpoints([checkpoint, checkpoint], ensemble=rule).predict(images, postprocess=False)
        same = zip(single, once, twice, strict=True)
        assert all(np.array_equal(a, b) and np.array_equal(a, c) for a, b, c in same), rule
    # Raising every logit z by a = 0.05 and by b = 0.2 gives nested masks, so their majority is the
    # middle model's (z > -a). As b > 2a, the mean probability already exceeds 0.5 a little below
    # (from z > -0.08): the mean's mask contains the vote's, and is larger wherever logits fall in
    # between, as the near-zero logits of the tiny model do.
    up_a = shifted_checkpoint(checkpoint, tmp_path / "up_a.pt", 0.05)
    up_b = shifted_checkpoint(checkpoint, tmp_path / "up_b.pt", 0.2)
    middle = Predictor.from_checkpoints([up_a]).predict(images, postprocess=False)
    vote = Predictor.from_checkpoints([checkpoint, up_a, up_b], ensemble="vote").predict(images, postprocess=False)
    mean = Predictor.from_checkpoints([checkpoint, up_a, up_b], ensemble="mean").predict(images, postprocess=False)
    assert all(np.array_equal(a, b) for a, b in zip(vote, middle, strict=True))
    assert all((m >= v).all() for m, v in zip(mean, vote, strict=True))
    assert sum(int(m.sum()) for m in mean) > sum(int(v.sum()) for v in vote)


def test_checkpoints_prepared_differently_cannot_be_combined(checkpoint, tmp_path):
    state = load_checkpoint(checkpoint)
    state["data"]["prepare"]["size"] = (96, 80)
    save_checkpoint(tmp_path / "other.pt", state)
    with pytest.raises(ConfigError, match="prepare option 'size'"):
        Predictor.from_checkpoints([checkpoint, tmp_path / "other.pt"])


def test_tta_output_is_flip_equivariant(checkpoint):
    image = np.random.default_rng(0).gamma(2.0, 100.0, size=(128, 108)).astype(np.float32)
    flips = [lambda a: a[..., ::-1], lambda a: a[..., ::-1, :], lambda a: a[..., ::-1, ::-1]]
    for tta in (True, False):
        predictor = Predictor.from_checkpoints([checkpoint], tta=tta)
        inputs = [predictor.preprocess(image)] + [predictor.preprocess(np.ascontiguousarray(f(image))) for f in flips]
        maps = list(predictor.score_maps(inputs, [image.shape] * len(inputs)))
        equivariant = [np.allclose(f(maps[0]), flipped, atol=1e-5) for f, flipped in zip(flips, maps[1:], strict=True)]
        # Without TTA the network itself is not flip-equivariant: the test can tell the two apart.
        assert all(equivariant) if tta else not any(equivariant)


# ---------------------------------------------------------------- volumes, other sources


def test_volumes_on_a_phantom_patient(checkpoint, phantom, tmp_path):
    """The code path of the volume target: ES as the frame of minimum total volume, errors vs phantom.json."""
    summary = predict([checkpoint], phantom / "patient01", tmp_path / "pred")
    assert summary["n_images"] == PHANTOM_SLICES * PHANTOM_FRAMES
    volumes = summary["volumes"]["P01"]
    assert volumes["es_rule"] == "min-total-volume" and volumes["slice_spacing_mm"] == pytest.approx(7.0)
    rows = [row for row in read_csv(tmp_path / "pred" / "volumes.csv") if row["level"] == "image"]
    frames = {phase: {int(row["frame"]) % PHANTOM_FRAMES for row in rows if row["phase"] == phase}
              for phase in ("ED", "ES")}
    assert frames["ED"] == {0} and len(frames["ES"]) == 1  # one ES instant for the whole stack
    es_frame = frames["ES"].pop()
    totals = [sum(float(row["area_mm2"]) for row in rows if int(row["frame"]) % PHANTOM_FRAMES == k)
              for k in range(PHANTOM_FRAMES)]
    assert es_frame == 1 + int(np.argmin(totals[1:]))
    assert volumes["ed_volume_ml"] == pytest.approx(totals[0] * 7.0 / 1000, rel=1e-4)
    assert volumes["es_volume_ml"] == pytest.approx(totals[es_frame] * 7.0 / 1000, rel=1e-4)
    truth = json.loads((phantom / "phantom.json").read_text())["truth"]
    errors = volume_errors(summary["volumes"], truth)
    assert set(errors["patients"]) == {"P01"} and errors["missing"] == ["P02", "P03"]
    assert errors["patients"]["P01"]["ed_volume_ml"]["truth"] == truth[0]["ed_volume_ml"]
    assert errors["max_relative_error"]["ed_volume_ml"] is not None


def test_a_whole_study_with_one_series_per_slice(checkpoint, phantom, tmp_path):
    """Short-axis slices stored as series of their own, SliceLocation measured along the table axis (as
    GE writes it), and a long-axis series beside them: one short-axis stack, slices 7 mm apart."""
    study = tmp_path / "study"
    for path in sorted((phantom / "patient01" / "P01dicom").glob("*.dcm")):
        dataset = pydicom.dcmread(path)
        index = (int(dataset.InstanceNumber) - 1) // PHANTOM_FRAMES
        dataset.SeriesInstanceUID = f"1.2.826.0.1.{index + 1}"
        dataset.SliceLocation = 0.6 * float(dataset.SliceLocation) + 12.0
        (study / f"sax{index}").mkdir(parents=True, exist_ok=True)
        dataset.save_as(study / f"sax{index}" / path.name)
        if index == 0:  # its frames again, as a long-axis cine: the same pixels in another plane
            dataset.SeriesInstanceUID = "1.2.826.0.1.99"
            dataset.SOPInstanceUID = f"1.2.826.0.1.99.{dataset.InstanceNumber}"
            dataset.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
            (study / "4ch").mkdir(exist_ok=True)
            dataset.save_as(study / "4ch" / f"LA-{path.name}")
    summary = predict([checkpoint], study, tmp_path / "pred")
    assert summary["n_images"] == (PHANTOM_SLICES + 1) * PHANTOM_FRAMES
    rows = read_csv(tmp_path / "pred" / "predictions.csv")
    (short_axis,) = {row["stack"] for row in rows if not row["id"].startswith("LA-")}
    (long_axis,) = {row["stack"] for row in rows if row["id"].startswith("LA-")}
    assert (short_axis, long_axis) == ("study", "4ch")  # named after the folders holding them
    (volumes,) = summary["volumes"].values()  # the long-axis stack has one slice location: no volume
    assert volumes["stack"] == short_axis and volumes["n_slices"] == PHANTOM_SLICES
    assert volumes["slice_spacing_mm"] == pytest.approx(7.0, abs=1e-4)  # not 0.6 x 7 mm
    assert volumes["es_rule"] == "min-total-volume"
    images = [row for row in read_csv(tmp_path / "pred" / "volumes.csv")
              if row["level"] == "image" and row["stack"] == short_axis]
    ed_area = sum(float(row["area_mm2"]) for row in images if row["phase"] == "ED")
    assert {row["id"] for row in images if row["phase"] == "ED"} == {
        f"P01-{k * PHANTOM_FRAMES:04d}" for k in range(PHANTOM_SLICES)}
    assert volumes["ed_volume_ml"] == pytest.approx(ed_area * 7.0 / 1000, rel=1e-4)


def test_output_ids_never_collide(tmp_path):
    files = [tmp_path / "scan.dcm", tmp_path / "scan.png", tmp_path / "scan-2.png", tmp_path / "a" / "x.dcm",
             tmp_path / "b" / "x.dcm"]
    # Counters are given in file order: scan.png takes "scan-2", so the file named scan-2 moves on.
    assert unique_ids(files, None) == {files[0]: "scan", files[1]: "scan-2", files[2]: "scan-2-2",
                                       files[3]: "x", files[4]: "x-2"}
    assert unique_ids(files, tmp_path)[files[3]] == "a_x" and unique_ids(files, tmp_path)[files[4]] == "b_x"


def test_volumes_of_an_acdc_style_rv_label(tmp_path):
    """A model of ACDC's ``rv`` label gives volumes too; slices 10 mm apart, phases given."""
    images, records = [], []
    for z in range(3):
        for phase, area in (("ED", 1000.0 + 100 * z), ("ES", 400.0 + 100 * z)):
            images.append(InputImage(id=f"p1-{phase}-{z}", source="", pixels=np.zeros((2, 2)), shape=(2, 2),
                                     stack="p1", spacing_mm=(1.0, 1.0), slice_location=10.0 * z, phase=phase))
            records.append({"phase": phase, "area_mm2_rv": area})
    (volumes,), notes, phases = write_volumes(tmp_path / "volumes.csv", images, records, ["rv", "myo", "lv"])
    assert notes == [] and phases == [record["phase"] for record in records]
    assert volumes["ed_volume_ml"] == pytest.approx(3300.0 * 10 / 1000)
    assert volumes["es_volume_ml"] == pytest.approx(1500.0 * 10 / 1000)
    assert volumes["ef_percent"] == pytest.approx(100 * (33 - 15) / 33)
    assert write_volumes(tmp_path / "none.csv", images, records, ["myo"]) == (
        [], ["no volumes: the model segments none of endo, rv (the ventricular cavity)"], phases)


def test_predict_on_a_prepared_data_set(checkpoint, prepared, phantom, tmp_path):
    summary = predict([checkpoint], prepared, tmp_path / "pred")
    assert summary["source_kind"] == "prepared"
    rows = read_csv(tmp_path / "pred" / "predictions.csv")
    assert len(rows) == summary["n_images"] == len(read_csv(prepared / "samples.csv"))
    # Outputs are at the phantom's original size, with the spacing scaled back to the DICOMs' own.
    written = json.loads((phantom / "phantom.json").read_text())
    assert imread(tmp_path / "pred" / "masks" / f"{rows[0]['id']}.png").shape == tuple(written["shape"])
    assert [float(row["spacing_mm"]) for row in rows] == pytest.approx([written["spacing_mm"]] * len(rows))
    assert {volumes["es_rule"] for volumes in summary["volumes"].values()} == {"given"}
    # Pixels normalised otherwise than the model's data would give wrong masks and volumes: refused.
    prepare(phantom, tmp_path / "zscore", PrepareOptions(size=MODEL_SIZE, normalize="zscore"))
    with pytest.raises(ConfigError, match="normalize='zscore' but the model's data with normalize='percentile'"):
        predict([checkpoint], tmp_path / "zscore", tmp_path / "pred-zscore")
    assert not (tmp_path / "pred-zscore").exists()


def test_predict_on_a_prepared_rvsc_patient_gives_an_ef_as_evaluate_does(checkpoint, shared_data, tmp_path):
    """A prepared RVSC patient holds only the contoured frames: ES lacks the basal slice, which counts as
    empty at ES (rvseg evaluate's rule), so the EF is reported instead of 'ED on 3 slices, ES on 2'."""
    prepare(shared_data / "rvsc-native" / "patient09", tmp_path / "p09", PrepareOptions(size=MODEL_SIZE))
    summary = predict([checkpoint], tmp_path / "p09", tmp_path / "pred")
    volumes = summary["volumes"]["P09"]
    assert volumes["es_rule"] == "given" and volumes["ef_percent"] is not None
    assert volumes["es_slices"] == volumes["ed_slices"]
    assert any(note.startswith("P09: ES is contoured on") for note in summary["notes"])


def test_single_dicom_file(checkpoint, phantom, tmp_path):
    summary = predict(str(checkpoint), phantom / "patient02" / "P02dicom" / "P02-0001.dcm", tmp_path / "pred")
    assert summary["source_kind"] == "dicom" and summary["n_images"] == 1
    assert summary["volumes"] == {}  # one slice: an area, no volume
    (row,) = [row for row in read_csv(tmp_path / "pred" / "volumes.csv") if row["level"] == "image"]
    assert row["id"] == "P02-0001"


def test_a_bare_dicom_data_set_without_a_name_suffix_is_segmented_as_its_part10_file(checkpoint, phantom, tmp_path):
    """Archives name frames IM0001 and the like, and old ones write them without preamble or file meta."""
    source = phantom / "patient02" / "P02dicom" / "P02-0001.dcm"
    dataset = pydicom.dcmread(source)
    del dataset.file_meta
    dataset.preamble = None
    (tmp_path / "study").mkdir()
    pydicom.dcmwrite(tmp_path / "study" / "IM0001", dataset, implicit_vr=True, enforce_file_format=False)
    summary = predict(str(checkpoint), tmp_path / "study", tmp_path / "bare")
    assert summary["n_images"] == 1 and summary["skipped"] == []
    predict(str(checkpoint), source, tmp_path / "part10")
    bare, = (tmp_path / "bare" / "masks").iterdir()
    assert bare.name == "IM0001.png"
    assert np.array_equal(imread(bare), imread(tmp_path / "part10" / "masks" / "P02-0001.png"))


def test_a_note_when_the_anatomy_is_at_another_scale_than_the_model_learned(checkpoint, phantom, tmp_path):
    """The model's data were resized to 64 x 56: a heart at half the pixel spacing fills twice as many
    model pixels. Without spacing the image size stands in, for a model trained at native size only."""
    def scale_notes_of(summary):
        return [note for note in summary["notes"] if "than the model's training images did" in note]

    source = phantom / "patient02" / "P02dicom" / "P02-0001.dcm"
    assert scale_notes_of(predict(str(checkpoint), source, tmp_path / "same")) == []
    dataset = pydicom.dcmread(source)
    dataset.PixelSpacing = [float(value) / 2 for value in dataset.PixelSpacing]
    dataset.save_as(tmp_path / "fine.dcm")
    (note,) = scale_notes_of(predict(str(checkpoint), tmp_path / "fine.dcm", tmp_path / "fine"))
    # The model was already trained on resized images: --size is no advice for it.
    assert note == ("1 of 1 image(s) show the anatomy about 2.0x larger than the model's training images did (by "
                    "pixel spacing): a model segments reliably at the scale it learned; train on images of this "
                    "resolution and field of view")

    native = Predictor(models=[nn.Conv2d(1, 1, 1)], labels=["endo"], prepare={"size": None},
                       data_infos=[{"scale": {"mm_per_pixel": None, "rows": 128.0}}])
    images = [InputImage(id=f"i{k}", source="", pixels=None, shape=shape)
              for k, shape in enumerate([(256, 216), (256, 216), (128, 108), (60, 50)])]
    advice = ("a model segments reliably at the scale it learned; train on images of this resolution, or prepare "
              "the training data with --size H W, which predict then applies to new images too")
    assert scale_notes(images, native) == [
        f"2 of 4 image(s) show the anatomy about 2.0x larger than the model's training images did (by image size): "
        f"{advice}",
        f"1 of 4 image(s) show the anatomy about 2.1x smaller than the model's training images did (by image size): "
        f"{advice}"]
    resized = replace(native, prepare={"size": [128, 108]})
    assert scale_notes(images, resized) == []  # every image is resized to the training images' size
    assert scale_notes(images, replace(native, data_infos=[{}])) == []  # a checkpoint from before the scale


# ---------------------------------------------------------------- skipped files, exit codes


@pytest.mark.filterwarnings("error::UserWarning")  # pydicom's remarks on the broken file stay inside the reader
def test_skipped_files_exit_codes_and_atomic_output(checkpoint, phantom, tmp_path, capsys):
    study = tmp_path / "study"
    (study / "series").mkdir(parents=True)
    for name in ("P01-0000.dcm", "P01-0001.dcm"):
        shutil.copy(phantom / "patient01" / "P01dicom" / name, study / "series" / name)
    imsave(study / "scout.png", np.random.default_rng(1).integers(0, 255, (60, 50), dtype=np.uint8))
    (study / "notes.txt").write_text("not an image\n")
    (study / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage")
    (study / ".hidden").write_text("ignored\n")
    out = tmp_path / "pred"
    args = ["predict", str(checkpoint), str(study), "--out", str(out), "--device", "cpu"]

    assert main(args) == 1
    stderr = capsys.readouterr().err
    assert "notes.txt" in stderr and "broken.dcm" in stderr
    skipped = read_csv(out / "skipped.csv")
    assert sorted(Path(row["path"]).name for row in skipped) == ["broken.dcm", "notes.txt"]
    assert all(row["reason"] for row in skipped)
    assert sorted(path.name for path in (out / "masks").iterdir()) == ["P01-0000.png", "P01-0001.png", "scout.png"]

    # An existing output is never overwritten without --force; a user error is exit code 2.
    assert main(args) == 2
    assert "not empty" in capsys.readouterr().err
    (study / "notes.txt").unlink()
    (study / "broken.dcm").unlink()
    assert main(args + ["--force"]) == 0
    assert read_csv(out / "skipped.csv") == []
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".pred")]

    # An output folder inside the source is not read again by a rerun.
    inside = ["predict", str(checkpoint), str(study), "--out", str(study / "pred"), "--device", "cpu", "--force"]
    assert main(inside) == 0 and main(inside) == 0
    assert sorted(path.name for path in (study / "pred" / "masks").iterdir()) == [
        "P01-0000.png", "P01-0001.png", "scout.png"]

    # Nor is an earlier output in another folder inside the source, which is listed as ignored.
    again = ["predict", str(checkpoint), str(study), "--out", str(study / "pred-2"), "--device", "cpu", "--json"]
    capsys.readouterr()
    assert main(again) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_images"] == 3 and summary["ignored"] == [
        {"path": str(study / "pred"), "reason": "an earlier rvseg predict output (not segmented again)"}]

    assert main(["predict", str(checkpoint), str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("nothing\n")
    assert main(["predict", str(checkpoint), str(tmp_path / "empty"), "--out", str(tmp_path / "y")]) == 2
    # The one line says why the first file was not read, not only that nothing was.
    assert f"the first, {tmp_path / 'empty' / 'readme.txt'}: not a DICOM" in capsys.readouterr().err
    assert main(["predict", str(checkpoint), str(tmp_path / "empty" / "readme.txt"), "--out", str(tmp_path / "z")]) == 2
    assert "not a DICOM" in capsys.readouterr().err
    assert not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def test_predict_library_errors(checkpoint, tmp_path):
    with pytest.raises(DataError, match="no such file"):
        predict([checkpoint], tmp_path / "nothing", tmp_path / "out")
    with pytest.raises(ConfigError, match="ensemble"):
        predict([checkpoint], tmp_path, tmp_path / "out", ensemble="median")
    with pytest.raises(ConfigError, match="--postprocess"):
        predict([checkpoint], tmp_path, tmp_path / "out", postprocess="biggest")
    with pytest.raises(DataError, match="no such checkpoint"):
        predict([tmp_path / "missing.pt"], tmp_path, tmp_path / "out")


def test_labels_and_tables_of_supported_layouts_are_ignored_not_skipped(checkpoint, shared_data, tmp_path, capsys):
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for path in [*shared_data.glob("rvsc-train-png/P01-0080*.png"), shared_data / "rvsc-train-png" / "train_dir.csv"]:
        shutil.copy(path, pngs)
    summary = predict([checkpoint], pngs, tmp_path / "pred-png")
    assert summary["n_images"] == 1 and summary["skipped"] == []
    assert sorted(Path(item["path"]).name for item in summary["ignored"]) == [
        "P01-0080-icontour-manual.png", "P01-0080-ocontour-manual.png", "train_dir.csv"]

    assert main(["predict", str(checkpoint), str(shared_data / "sunnybrook-subset"), "--out",
                 str(tmp_path / "pred-sb"), "--device", "cpu", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_images"] == 106 and summary["skipped"] == []
    assert sorted(summary["volumes"]) == [f"SCD0000{n}01" for n in range(1, 6)]  # a stack per patient folder
    # GE's SliceLocation runs along the table (6.7 mm apart); the CSV also gives the plane positions the
    # volumes use (10 mm apart), so a volume can be checked from it.
    images = [row for row in read_csv(tmp_path / "pred-sb" / "volumes.csv")
              if row["level"] == "image" and row["stack"] == "SCD0000101"]
    positions = sorted({round(float(row["position_mm"]), 2) for row in images})
    assert np.diff(positions) == pytest.approx([10.0] * 8 + [20.0], abs=0.05)  # the subset lacks one slice
    assert any(note.startswith("SCD0000101: 1 slice(s) missing between") for note in summary["notes"])
    assert summary["volumes"]["SCD0000101"]["slice_spacing_mm"] == pytest.approx(10.0, abs=0.05)
    reasons = Counter(item["reason"] for item in summary["ignored"])
    assert reasons == {"a contour file": 249 - 106 - 1, "a table (a data set's manifest or link file), not an image": 1}


def test_stack_names_never_collide():
    from rvseg.data.sources import stack_names

    def stack_in(folder: str) -> list:
        return [SimpleNamespace(path=Path(folder) / "IM-1.dcm")]

    stacks = [stack_in("s/A"), stack_in("s/A"), stack_in("s/A-stack1")]
    assert stack_names(stacks, "s") == ["A-stack1", "A-stack2", "A-stack1-2"]
    assert stack_names([stack_in("s/P1"), stack_in("t/P2")], "s") == ["P1", "P2"]


def test_force_never_deletes_the_input_or_the_model(checkpoint, phantom, tmp_path, capsys):
    study = tmp_path / "victim" / "patient03"
    shutil.copytree(phantom / "patient03", study)
    model = tmp_path / "model"
    shutil.copytree(checkpoint.parent if checkpoint.is_file() else checkpoint, model)
    one_file = study / "P03dicom" / "P03-0000.dcm"
    refused = [
        (model, study, study),  # out is the source folder
        (model, study, study.parent),  # out holds the source folder
        (model, one_file, study),  # out holds a single-file source
        (model, study / "P03dicom", tmp_path / "victim"),  # an RVSC series folder under out
        (model, one_file, model),  # out is the model folder
    ]
    before = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*"))
    for model_arg, source, out in refused:
        args = ["predict", str(model_arg), str(source), "--out", str(out), "--device", "cpu", "--force"]
        assert main(args) == 2
        assert "would delete that input" in capsys.readouterr().err
    assert sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*")) == before


def test_output_paths_that_cannot_be_written_give_one_line(checkpoint, phantom, tmp_path, capsys, monkeypatch):
    source = phantom / "patient01" / "P01dicom" / "P01-0000.dcm"
    (tmp_path / "a-file").write_text("x\n")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for out, words in ((tmp_path / "a-file" / "sub", "which is a file"), (tmp_path / "link", "symbolic link")):
        assert main(["predict", str(checkpoint), str(source), "--out", str(out), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err and "Traceback" not in err
    assert list((tmp_path / "real").iterdir()) == []
    # A folder without write permission (or on a read-only disk) is refused before any work.
    with monkeypatch.context() as patch:
        patch.setattr("rvseg.io.os.access", lambda path, mode: False)
        out = tmp_path / "ro" / "p"
        assert main(["predict", str(checkpoint), str(source), "--out", str(out), "--device", "cpu"]) == 2
        assert f"cannot write in {tmp_path} (no permission" in capsys.readouterr().err
    # A folder the system refuses to create (here under /proc, which even root cannot write).
    assert main(["predict", str(checkpoint), str(source), "--out", "/proc/rvseg-test/pred", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rvseg: /proc/rvseg-test") and err.count("\n") == 1


def test_stack_instants_from_given_phases_cine_frames_or_none():
    def image(stack, location=None, trigger=None, frame=None, phase="", number=None, prepared=False):
        return InputImage(id=f"{stack}-{location}-{trigger}-{frame}-{phase}-{number}", source="",
                          pixels=np.zeros((2, 2), np.float32), shape=(2, 2), stack=stack, slice_location=location,
                          trigger_time=trigger, frame=frame, phase=phase, slice_number=number, prepared=prepared)

    # a prepared data set: phases as given, positions in one unit per instant (numbers: a location is missing)
    prepared = [image("P1", phase=phase, number=n, prepared=True) for n in (3, 1, 2) for phase in ("ED", "ES")]
    prepared[0].slice_location = -30.0
    instants, positions = stack_instants(prepared)
    assert instants == [("P1", phase) for _ in range(3) for phase in ("ED", "ES")]
    assert positions == [3, 3, 1, 1, 2, 2]
    # ... and its images of no known phase are not grouped: they may be any instants
    unlabelled = [image("P2", number=n, frame=f, prepared=True) for n, f in ((1, 0), (2, 7), (3, 13))]
    assert stack_instants(unlabelled) == ([None] * 3, [None] * 3)
    # a cine: the k-th frame of every slice in trigger-time order is one instant, whatever the file order
    cine = [image("S", location=z, trigger=t, frame=f) for z in (0.0, 8.0) for f, t in ((1, 30.0), (2, 0.0), (3, 60.0))]
    instants, positions = stack_instants(cine)
    assert instants == [("S", 1), ("S", 0), ("S", 2)] * 2 and positions == [0.0] * 3 + [8.0] * 3
    # slices with different frame counts, a single slice location, images without a position
    assert stack_instants(cine[:5]) == ([None] * 5, [None] * 5)
    assert stack_instants(cine[:3]) == ([None] * 3, [None] * 3)
    loose = [image("L"), image("L", frame=2)]
    assert stack_instants(loose + cine)[0] == [None, None] + [("S", 1), ("S", 0), ("S", 2)] * 2


def test_segmenting_units_keep_instants_whole_in_batches():
    instants = [("s", 0), None, ("s", 1), ("s", 0), None, ("s", 1), ("t", 0), None, ("t", 0)]
    units = segmenting_units(instants, batch_size=3)
    assert units == [[0, 3, 2, 5], [6, 8, 1], [4, 7]]
    assert segmenting_units([None] * 5, batch_size=2) == [[0, 1], [2, 3], [4]]
    assert segmenting_units([("s", k) for k in range(20)], batch_size=16) == [list(range(16)), list(range(16, 20))]


@pytest.mark.parametrize("rule", ["stack", "largest", "none"])
def test_each_rule_writes_the_masks_it_computes_for_each_image(checkpoint, phantom, tmp_path, rule):
    """Wiring: the masks written for a cine (slices x frames) are the rule applied to the predictor's own
    scores, the ``stack`` rule to each instant of the stack (the images are segmented instant by instant)."""
    summary = predict([checkpoint], phantom / "patient01", tmp_path / "pred", postprocess=rule)
    assert summary["postprocess"] == rule
    images = read_source(phantom / "patient01").images
    predictor = Predictor.from_checkpoints([checkpoint])
    scores = list(predictor.score_maps([predictor.preprocess(image.read_pixels()) for image in images],
                                       [image.shape for image in images]))
    instants, positions = stack_instants(images)
    assert sum(instant is not None for instant in instants) == PHANTOM_SLICES * PHANTOM_FRAMES
    expected = postprocess_scores(scores, rule, instants, positions)
    for image, masks in zip(images, expected, strict=True):
        written = imread(tmp_path / "pred" / "masks" / f"{image.id}.png") > 0
        assert np.array_equal(written, masks[0]), image.id


# ---------------------------------------------------------------- NIfTI and ACDC sources


def phantom_cine(phantom: Path) -> tuple[np.ndarray, tuple[float, float]]:
    """Patient P01's DICOMs as float32 (rows, cols, slices, frames), slice s frame f = P01-(s*frames+f).dcm."""
    images = {path.stem: read_dicom(path) for path in (phantom / "patient01" / "P01dicom").glob("*.dcm")}
    cine = np.stack([np.stack([images[f"P01-{s * PHANTOM_FRAMES + f:04d}"].pixels for f in range(PHANTOM_FRAMES)],
                              axis=-1) for s in range(PHANTOM_SLICES)], axis=2)
    return cine.astype(np.float32), images["P01-0000"].spacing_mm


def save_nifti(path: Path, data: np.ndarray, spacing: tuple[float, float], slice_spacing: float = 7.0) -> None:
    nib.save(nib.Nifti1Image(data, np.diag([spacing[0], spacing[1], slice_spacing, 1.0])), path)


def png_mask(path: Path) -> np.ndarray:
    return imread(path) > 0


@pytest.fixture(scope="module")
def dicom_prediction(checkpoint, phantom, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("dicom") / "pred"
    return out, predict([checkpoint], phantom / "patient01", out)


def enhanced_mr(files: list[Path], out: Path) -> Path:
    """One multi-frame (enhanced MR) file of ``files``' frames, their geometry and timing only in the
    per-frame functional groups, the pixel spacing in the shared ones (as Philips exports a cine)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    frames = [pydicom.dcmread(path) for path in files]
    pixels = np.stack([frame.pixel_array for frame in frames])
    dataset = pydicom.dcmread(files[0])
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "TriggerTime",
                    "SliceLocation", "SliceThickness", "InstanceNumber"):
        if keyword in dataset:
            delattr(dataset, keyword)
    dataset.NumberOfFrames = len(frames)
    dataset.PixelData = pixels.tobytes()

    def item(**tags) -> Dataset:
        inner = Dataset()
        for keyword, value in tags.items():
            setattr(inner, keyword, value)
        return inner

    shared = item(PixelMeasuresSequence=Sequence([item(PixelSpacing=frames[0].PixelSpacing,
                                                       SliceThickness=frames[0].SliceThickness)]))
    dataset.SharedFunctionalGroupsSequence = Sequence([shared])
    dataset.PerFrameFunctionalGroupsSequence = Sequence([item(
        PlanePositionSequence=Sequence([item(ImagePositionPatient=frame.ImagePositionPatient)]),
        PlaneOrientationSequence=Sequence([item(ImageOrientationPatient=frame.ImageOrientationPatient)]),
        CardiacSynchronizationSequence=Sequence([item(NominalCardiacTriggerDelayTime=frame.TriggerTime)]),
    ) for frame in frames])
    dataset.save_as(out)
    return out


def test_an_enhanced_mr_cine_in_one_file_is_segmented_as_its_frames_are(checkpoint, phantom, dicom_prediction,
                                                                      tmp_path):
    """Philips and Siemens XA export a cine as one multi-frame file: every frame is read with the geometry
    of its functional groups, so masks and volumes equal those of the same frames as single files."""
    files = sorted((phantom / "patient01" / "P01dicom").glob("*.dcm"))
    (tmp_path / "cine").mkdir()
    enhanced_mr(files[::-1], tmp_path / "cine" / "cine.dcm")  # frame order is not file order
    summary = predict([checkpoint], tmp_path / "cine", tmp_path / "pred")
    assert summary["n_images"] == len(files) and summary["skipped"] == []
    dicom_out, dicom_summary = dicom_prediction
    for k, path in enumerate(files[::-1], start=1):
        np.testing.assert_array_equal(png_mask(tmp_path / "pred" / "masks" / f"cine-f{k:04d}.png"),
                                      png_mask(dicom_out / "masks" / f"{path.stem}.png"))
    (volumes,) = summary["volumes"].values()
    expected = dicom_summary["volumes"]["P01"]
    for key in ("slice_spacing_mm", "ed_volume_ml", "es_volume_ml", "ef_percent"):
        assert volumes[key] == pytest.approx(expected[key], rel=1e-6)


def test_a_dicom_source_holds_no_single_frame_pixels_until_they_are_segmented(phantom, tmp_path):
    """A large study is not held in memory whole: single-frame DICOM images keep their metadata and
    read their pixels again when segmented (the same values); a multi-frame file's frames stay held."""
    files = sorted((phantom / "patient01" / "P01dicom").glob("*.dcm"))
    (tmp_path / "cine").mkdir()
    enhanced_mr(files[:3], tmp_path / "cine" / "multi.dcm")
    source = read_source(phantom / "patient01")
    dicoms = [image for image in source.images if image.source.endswith(".dcm")]
    assert len(dicoms) == len(files) and all(image.pixels is None for image in dicoms)
    for image in dicoms[:3]:
        expected = read_dicom(image.source).pixels
        assert image.shape == expected.shape
        np.testing.assert_array_equal(image.read_pixels(), expected)
    multi = read_source(tmp_path / "cine").images
    assert len(multi) == 3 and all(image.pixels is not None for image in multi)
    np.testing.assert_array_equal(multi[0].read_pixels(), multi[0].pixels)


def test_enhanced_mr_of_one_frame_keeps_its_geometry_and_a_short_per_frame_sequence_is_refused(phantom, tmp_path):
    from rvseg.data.dicom import read_dicom_frames

    files = sorted((phantom / "patient01" / "P01dicom").glob("*.dcm"))
    (single,) = read_dicom_frames(enhanced_mr(files[:1], tmp_path / "one.dcm"))
    original = read_dicom(files[0])
    assert (single.position, single.normal, single.spacing_mm, single.trigger_time) == (
        original.position, original.normal, original.spacing_mm, original.trigger_time)
    short = pydicom.dcmread(enhanced_mr(files[:3], tmp_path / "short.dcm"))
    del short.PerFrameFunctionalGroupsSequence[2]
    short.save_as(tmp_path / "short.dcm")
    with pytest.raises(DataError, match="PerFrameFunctionalGroupsSequence has 2 items for 3 frames"):
        read_dicom_frames(tmp_path / "short.dcm")


def test_a_legacy_multi_frame_cine_times_its_frames_by_the_cine_module(phantom, tmp_path):
    """A multi-frame file without functional groups (one slice's cine, PS3.3 C.7.6.5): frame k lies
    FrameTime x k, or the sum of FrameTimeVector's first k + 1 increments, after the file's TriggerTime."""
    from rvseg.data.dicom import read_dicom_frames

    files = sorted((phantom / "patient01" / "P01dicom").glob("*.dcm"))[:4]
    dataset = pydicom.dcmread(files[0])
    dataset.NumberOfFrames = len(files)
    dataset.PixelData = np.stack([pydicom.dcmread(path).pixel_array for path in files]).tobytes()
    dataset.TriggerTime = 10
    dataset.FrameTime = 40
    dataset.save_as(tmp_path / "cine.dcm")
    assert [frame.trigger_time for frame in read_dicom_frames(tmp_path / "cine.dcm")] == [10, 50, 90, 130]
    dataset.FrameTimeVector = [0, 30, 45, 45]  # the vector wins: frames need not be evenly spaced
    dataset.save_as(tmp_path / "cine.dcm")
    assert [frame.trigger_time for frame in read_dicom_frames(tmp_path / "cine.dcm")] == [10, 40, 85, 130]
    del dataset.FrameTimeVector, dataset.FrameTime
    dataset.save_as(tmp_path / "cine.dcm")  # no cine timing: every frame keeps the file's TriggerTime
    assert [frame.trigger_time for frame in read_dicom_frames(tmp_path / "cine.dcm")] == [10] * 4


def test_a_nifti_cine_is_segmented_as_its_dicoms_are(checkpoint, phantom, dicom_prediction, tmp_path):
    """The same pixels as a 4D NIfTI: the same masks slice by slice, put back into the volume's geometry
    (axes, affine), and the same volumes."""
    cine, spacing = phantom_cine(phantom)
    save_nifti(tmp_path / "cine.nii.gz", cine, spacing)
    summary = predict([checkpoint], tmp_path / "cine.nii.gz", tmp_path / "pred")
    assert summary["source_kind"] == "nifti" and summary["n_images"] == PHANTOM_SLICES * PHANTOM_FRAMES
    assert summary["nifti_masks"] == ["cine.nii.gz"]
    # The test model was trained on an RVSC-layout phantom, not ACDC: the orientation is worth a look.
    assert any(note.startswith("NIfTI slices are segmented as stored") and "trained on rvsc images" in note
               for note in summary["notes"])
    saved = nib.load(tmp_path / "pred" / "masks" / "cine.nii.gz")
    assert saved.get_data_dtype() == np.uint8 and np.allclose(saved.affine, np.diag([*spacing, 7.0, 1.0]))
    volume = np.asarray(saved.dataobj)
    assert volume.shape == cine.shape and set(np.unique(volume)) == {0, 1}
    dicom_out, dicom_summary = dicom_prediction
    for s in range(PHANTOM_SLICES):
        for f in range(PHANTOM_FRAMES):
            nifti_png = png_mask(tmp_path / "pred" / "masks" / f"cine-frame{f + 1:02d}-slice{s:02d}.png")
            np.testing.assert_array_equal(volume[:, :, s, f] == 1, nifti_png)
            dicom_png = png_mask(dicom_out / "masks" / f"P01-{s * PHANTOM_FRAMES + f:04d}.png")
            np.testing.assert_array_equal(nifti_png, dicom_png)
    (volumes,) = summary["volumes"].values()
    expected = dicom_summary["volumes"]["P01"]
    assert volumes["stack"] == "cine" and volumes["es_rule"] == "min-total-volume"
    for key in ("slice_spacing_mm", "ed_volume_ml", "es_volume_ml", "ef_percent"):
        assert volumes[key] == pytest.approx(expected[key], rel=1e-6)


def write_acdc_patient(root: Path, cine: np.ndarray, spacing: tuple[float, float], frames: dict[int, int],
                       info: str) -> Path:
    """An ACDC patient folder: ``frames`` maps ACDC frame number -> index of the phantom frame it holds."""
    folder = root / "patient101"
    folder.mkdir(parents=True)
    labels = np.zeros(cine.shape[:3], dtype=np.uint8)
    labels[10:20, 10:20] = 1
    for number, index in frames.items():
        save_nifti(folder / f"patient101_frame{number:02d}.nii.gz", cine[..., index], spacing)
        save_nifti(folder / f"patient101_frame{number:02d}_gt.nii.gz", labels, spacing)
    save_nifti(folder / "patient101_4d.nii.gz", cine, spacing)
    (folder / "Info.cfg").write_text(info)
    return folder


def test_an_acdc_patient_folder(checkpoint, phantom, dicom_prediction, tmp_path):
    """The frame volumes (not the ground truths, nor the 4D cine), one stack, phases from Info.cfg;
    ids those of the ACDC reader; masks as the DICOMs of the same frames give them."""
    cine, spacing = phantom_cine(phantom)
    folder = write_acdc_patient(tmp_path / "database" / "testing", cine, spacing, {1: 0, 3: 2}, "ED: 1\nES: 3\n")
    summary = predict([checkpoint], tmp_path / "database", tmp_path / "pred")
    assert summary["source_kind"] == "acdc" and summary["skipped"] == []
    assert sorted(summary["nifti_masks"]) == ["patient101_frame01.nii.gz", "patient101_frame03.nii.gz"]
    rows = read_csv(tmp_path / "pred" / "predictions.csv")
    assert {row["id"] for row in rows} == {sample.id for sample in read_acdc(folder).samples}
    assert {(row["id"][:18], row["phase"], row["stack"]) for row in rows} == {
        ("patient101-frame01", "ED", "patient101"), ("patient101-frame03", "ES", "patient101")}
    dicom_out, _ = dicom_prediction
    for number, index in ((1, 0), (3, 2)):
        volume = np.asarray(nib.load(tmp_path / "pred" / "masks" / f"patient101_frame{number:02d}.nii.gz").dataobj)
        for s in range(PHANTOM_SLICES):
            np.testing.assert_array_equal(volume[:, :, s] == 1,
                                          png_mask(dicom_out / "masks" / f"P01-{s * PHANTOM_FRAMES + index:04d}.png"))
    volumes = summary["volumes"]["patient101"]
    areas = {phase: sum(float(row["area_mm2_endo"]) for row in rows if row["phase"] == phase) for phase in ("ED", "ES")}
    assert volumes["es_rule"] == "given" and volumes["slice_spacing_mm"] == pytest.approx(7.0)
    assert volumes["ed_volume_ml"] == pytest.approx(areas["ED"] * 7.0 / 1000, rel=1e-6)
    assert volumes["es_volume_ml"] == pytest.approx(areas["ES"] * 7.0 / 1000, rel=1e-6)


def test_a_dicomdir_and_reports_beside_the_images_are_left_alone(checkpoint, phantom, tmp_path, capsys):
    """A CD or PACS export holds a DICOMDIR (PS3.10) and may hold reports: objects of a non-image SOP class,
    left alone with their class named. A file of an image class without pixel data is damaged: skipped."""
    from pydicom.fileset import FileSet
    from pydicom.uid import BasicTextSRStorage

    frames = sorted((phantom / "patient01" / "P01dicom").glob("*.dcm"))[:2]
    export = tmp_path / "export"
    file_set = FileSet()
    for path in frames:
        dataset = pydicom.dcmread(path)
        dataset.StudyDate, dataset.StudyTime, dataset.StudyID = "20261127", "120000", "1"  # what a DICOMDIR lists
        file_set.add(dataset)
    file_set.write(export)
    report = pydicom.dcmread(frames[0])
    del report.PixelData
    report.SOPClassUID = report.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    report.save_as(export / "report.dcm")
    source = read_source(export)
    assert len(source.images) == 2 and source.skipped == []
    assert {Path(item["path"]).name: item["reason"] for item in source.ignored} == {
        "DICOMDIR": "a DICOM Media Storage Directory Storage object, not an image",
        "report.dcm": "a DICOM Basic Text SR Storage object, not an image"}
    assert main(["predict", str(checkpoint), str(export), "--out", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    assert "left 2 file(s) alone (ignored.csv says why)" in capsys.readouterr().out

    damaged = pydicom.dcmread(frames[0])
    del damaged.PixelData
    damaged.save_as(export / "damaged.dcm")
    assert [(Path(item["path"]).name, item["reason"]) for item in read_source(export).skipped] == [
        ("damaged.dcm", "DICOM file holds no pixel data (not an image, or the file is truncated)")]


def test_nifti_files_in_a_folder_bad_ones_skipped_companions_ignored(checkpoint, phantom, tmp_path, capsys):
    cine, spacing = phantom_cine(phantom)
    study = tmp_path / "study"
    (study / "a").mkdir(parents=True)
    (study / "b").mkdir()
    save_nifti(study / "a" / "scan.nii.gz", cine[..., 0], spacing)
    (study / "a" / "scan.json").write_text("{}")  # a dcm2niix sidecar
    save_nifti(study / "b" / "scan.nii", cine[:, :, 0, 0], spacing)  # 2D: one slice
    save_nifti(study / "a" / "scan_gt.nii.gz", (cine[..., 0] > 0).astype(np.uint8), spacing)
    (study / "broken.nii.gz").write_bytes(b"not gzip at all")
    out = tmp_path / "pred"
    assert main(["predict", str(checkpoint), str(study), "--out", str(out), "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert "broken.nii.gz: cannot be read as a NIfTI volume" in captured.err
    assert "left 2 file(s) alone (ignored.csv says why)" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["nifti_masks"]) == ["a_scan.nii.gz", "b_scan.nii.gz"]
    assert {Path(item["path"]).name: item["reason"] for item in summary["ignored"]} == {
        "scan.json": "the sidecar of the NIfTI image scan",
        "scan_gt.nii.gz": "a label volume (its name ends in _gt), not an image to segment"}
    assert len(read_csv(out / "ignored.csv")) == 2
    assert "b_scan: one slice position, so no volume" in summary["notes"]
    single = np.asarray(nib.load(out / "masks" / "b_scan.nii.gz").dataobj)
    assert single.shape == cine.shape[:2]
    np.testing.assert_array_equal(single == 1, png_mask(out / "masks" / "b_scan-slice00.png"))
    assert {row["stack"] for row in read_csv(out / "predictions.csv")} == {"a_scan", "b_scan"}

    assert main(["predict", str(checkpoint), str(study / "broken.nii.gz"), "--out", str(tmp_path / "x")]) == 2
    assert main(["predict", str(checkpoint), str(study / "a" / "scan_gt.nii.gz"), "--out", str(tmp_path / "y")]) == 2
    stderr = capsys.readouterr().err
    assert "broken.nii.gz: cannot be read" in stderr and "scan_gt.nii.gz: a label volume" in stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_nifti_beside_dicoms_of_the_same_name_is_a_stack_of_its_own(checkpoint, phantom, dicom_prediction,
                                                                      tmp_path):
    """``study/`` holds DICOMs (stack ``study``) and ``study.nii.gz`` (not stack ``study`` too), and a NIfTI
    slice id that is another file's name does not overwrite its outputs."""
    cine, spacing = phantom_cine(phantom)
    study = tmp_path / "study"
    shutil.copytree(phantom / "patient01" / "P01dicom", study)
    save_nifti(study / "study.nii.gz", cine, spacing)
    save_nifti(study / "scan.nii.gz", cine[..., 0], spacing)
    imsave(study / "scan-slice00.png", np.full((40, 30), 200, dtype=np.uint8), check_contrast=False)
    summary = predict([checkpoint], study, tmp_path / "pred")
    _, dicom_summary = dicom_prediction
    expected = dicom_summary["volumes"]["P01"]
    assert sorted(summary["volumes"]) == ["scan", "study", "study-2"]
    for key in ("ed_volume_ml", "es_volume_ml", "ef_percent"):
        assert summary["volumes"]["study"][key] == pytest.approx(expected[key], rel=1e-6)
        assert summary["volumes"]["study-2"][key] == pytest.approx(expected[key], rel=1e-6)
    rows = read_csv(tmp_path / "pred" / "predictions.csv")
    assert len({row["id"] for row in rows}) == len(rows) == 2 * PHANTOM_SLICES * PHANTOM_FRAMES + PHANTOM_SLICES + 1
    assert {"scan-slice00", "scan-slice00-2"} <= {row["id"] for row in rows}
    assert (tmp_path / "pred" / "masks" / "scan-slice00-2.png").is_file()
    frames = sorted({int(row["frame"]) for row in rows if row["id"].startswith("study-frame")})
    assert frames == list(range(1, PHANTOM_FRAMES + 1))


def test_acdc_phases_missing_frames_bad_frames_and_other_files(checkpoint, phantom, tmp_path, capsys):
    """Info.cfg's phases are kept even against the volume curve; an ES frame without its file is a note;
    a 4D frame file is skipped; the other files below the root are listed as ignored, with why."""
    cine, spacing = phantom_cine(phantom)
    root = tmp_path / "database"
    folder = write_acdc_patient(root / "training", cine, spacing, {1: 0, 3: 2}, "ED: 3\nES: 1\n")
    other = write_acdc_patient(root / "testing", cine, spacing, {2: 1}, "ED: 2\nES: 9\n")
    other.rename(other.parent / "patient102")
    for path in (other.parent / "patient102").iterdir():
        path.rename(path.with_name(path.name.replace("patient101", "patient102")))
    save_nifti(other.parent / "patient102" / "patient102_frame05.nii.gz", cine, spacing)  # 4D: not a frame
    save_nifti(root / "extra.nii.gz", cine[..., 0], spacing)
    (root / "MANDATORY_CITATION.md").write_text("cite ACDC\n")
    out = tmp_path / "pred"
    assert main(["predict", str(checkpoint), str(root), "--out", str(out), "--device", "cpu"]) == 1
    assert "patient102_frame05.nii.gz: is not a 3D volume (shape (" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["source_kind"] == "acdc"
    assert "patient102: Info.cfg gives ES as frame 9, which has no frame volume (patient102_frame09.nii.gz)" in (
        summary["notes"])
    rows = read_csv(out / "predictions.csv")
    assert {(row["id"][:18], row["phase"]) for row in rows} == {
        ("patient101-frame01", "ES"), ("patient101-frame03", "ED"), ("patient102-frame02", "ED")}
    assert summary["volumes"]["patient101"]["es_rule"] == "given"
    reasons = {Path(item["path"]).name: item["reason"] for item in summary["ignored"]}
    assert reasons["patient101_4d.nii.gz"].startswith("the whole cine of an ACDC patient")
    assert reasons["patient101_frame01_gt.nii.gz"].startswith("a label volume")
    assert reasons["extra.nii.gz"].startswith("not an ACDC patient's frame volume")
    assert set(reasons) == {"patient101_4d.nii.gz", "patient102_4d.nii.gz", "patient101_frame01_gt.nii.gz",
                            "patient101_frame03_gt.nii.gz", "patient102_frame02_gt.nii.gz", "extra.nii.gz",
                            "MANDATORY_CITATION.md"}
    assert folder.is_dir()


def test_an_acdc_cine_takes_its_phases_from_the_info_cfg_beside_it(checkpoint, phantom, tmp_path):
    cine, spacing = phantom_cine(phantom)
    folder = write_acdc_patient(tmp_path, cine, spacing, {1: 0}, "ED: 2\nES: 4\n")
    summary = predict([checkpoint], folder / "patient101_4d.nii.gz", tmp_path / "pred")
    rows = read_csv(tmp_path / "pred" / "predictions.csv")
    assert {int(row["frame"]): row["phase"] for row in rows} == {1: "", 2: "ED", 3: "", 4: "ES"}
    assert summary["volumes"]["patient101_4d"]["es_rule"] == "given"
    # A folder of the cine and its Info.cfg alone: the Info.cfg is read for the phases, not skipped as a bad image.
    only = tmp_path / "only" / "patient101"
    only.mkdir(parents=True)
    for name in ("patient101_4d.nii.gz", "Info.cfg"):
        shutil.copy(folder / name, only / name)
    summary = predict([checkpoint], only, tmp_path / "pred-only")
    assert summary["skipped"] == [] and [item["path"] for item in summary["ignored"]] == [str(only / "Info.cfg")]
    assert {row["phase"] for row in read_csv(tmp_path / "pred-only" / "predictions.csv")} == {"", "ED", "ES"}


def test_an_acdc_frame_file_alone_takes_its_phase_from_the_info_cfg_beside_it(checkpoint, phantom, tmp_path):
    """An ES frame given alone is reported as an ESV, not as the 'ED volume' of a phase-less stack."""
    cine, spacing = phantom_cine(phantom)
    folder = write_acdc_patient(tmp_path, cine, spacing, {1: 0, 3: 2}, "ED: 1\nES: 3\n")
    summary = predict([checkpoint], folder / "patient101_frame03.nii.gz", tmp_path / "es")
    rows = read_csv(tmp_path / "es" / "predictions.csv")
    assert {(int(row["frame"]), row["phase"]) for row in rows} == {(3, "ES")}
    (volumes,) = summary["volumes"].values()
    assert volumes["ed_volume_ml"] is None and volumes["es_volume_ml"] > 0
    (folder / "Info.cfg").write_text("ED: 1\nES: 5\n")  # frame 3 is neither: said so
    summary = predict([checkpoint], folder / "patient101_frame03.nii.gz", tmp_path / "mid")
    assert f"{folder / 'Info.cfg'}: gives ED as frame 1, ES as frame 5, not frame 3: the volume of " \
           "patient101_frame03.nii.gz is neither an EDV nor an ESV" in summary["notes"]
    flat = tmp_path / "flat"  # another patient's Info.cfg beside the frame: not this patient's phases
    flat.mkdir()
    shutil.copy(folder / "patient101_frame03.nii.gz", flat / "patient101_frame03.nii.gz")
    (flat / "Info.cfg").write_text("ED: 1\nES: 3\n")
    summary = predict([checkpoint], flat, tmp_path / "flat-pred")
    assert {row["phase"] for row in read_csv(tmp_path / "flat-pred" / "predictions.csv")} == {"ED"}
    assert summary["skipped"] == [] and summary["ignored"] == [{
        "path": str(flat / "Info.cfg"),
        "reason": "an ACDC patient information file, not used: the NIfTI images beside it are not its patient's"}]
    (folder / "Info.cfg").write_text("ED: 1\nES: 1\n")  # unusable: the phase is unknown, with a note
    summary = predict([checkpoint], folder / "patient101_frame03.nii.gz", tmp_path / "bad")
    assert {row["phase"] for row in read_csv(tmp_path / "bad" / "predictions.csv")} == {"ED"}  # the stack's only
    assert any(note.startswith(f"{folder / 'Info.cfg'}: ") and note.endswith(
        "the phase of patient101_frame03.nii.gz is unknown") for note in summary["notes"])
    (folder / "Info.cfg").unlink()  # a frame file copied out of its folder: no note
    summary = predict([checkpoint], folder / "patient101_frame03.nii.gz", tmp_path / "alone")
    assert not any("Info.cfg" in note for note in summary["notes"])


def test_acdc_phases_are_read_when_the_patient_folder_is_given_as_a_relative_path(checkpoint, phantom, tmp_path,
                                                                                  monkeypatch):
    """``cd patient101 && rvseg predict RUN .``: the folder's name is its absolute path's, not ".'s"."""
    cine, spacing = phantom_cine(phantom)
    folder = write_acdc_patient(tmp_path, cine, spacing, {1: 0}, "ED: 2\nES: 4\n")
    (folder / "patient101_frame01.nii.gz").unlink()
    (folder / "patient101_frame01_gt.nii.gz").unlink()  # the cine and its Info.cfg alone
    monkeypatch.chdir(folder)
    summary = predict([checkpoint], ".", tmp_path / "pred")
    assert summary["skipped"] == [] and summary["ignored"][0]["reason"].startswith("the ACDC patient information")
    assert {row["phase"] for row in read_csv(tmp_path / "pred" / "predictions.csv")} == {"", "ED", "ES"}
    predict([checkpoint], "patient101_4d.nii.gz", tmp_path / "cine")
    assert {row["phase"] for row in read_csv(tmp_path / "cine" / "predictions.csv")} == {"", "ED", "ES"}


def test_non_finite_voxels_are_replaced_with_a_note(checkpoint, phantom, tmp_path):
    cine, spacing = phantom_cine(phantom)
    cine[0, 0] = np.nan
    save_nifti(tmp_path / "cine.nii.gz", cine, spacing)
    summary = predict([checkpoint], tmp_path / "cine.nii.gz", tmp_path / "pred")
    count = PHANTOM_SLICES * PHANTOM_FRAMES
    assert f"{tmp_path / 'cine.nii.gz'}: {count} non-finite voxel(s) set to the lowest finite value" in summary["notes"]
    assert all(int(row["area_px_endo"]) > 0 for row in read_csv(tmp_path / "pred" / "predictions.csv"))


def test_nifti_masks_of_several_labels(tmp_path):
    """One file per label for overlapping labels (endo, epi); one label map in ACDC's values for ACDC's."""
    volume = read_nifti_fixture(tmp_path, (6, 5, 2, 3))
    image = InputImage(id="x", source="", pixels=np.zeros((6, 5)), shape=(6, 5), volume="cine", volume_index=(1, 2))
    loose = InputImage(id="png", source="", pixels=np.zeros((6, 5)), shape=(6, 5))
    diagonal, everything = np.eye(6, 5, dtype=bool), np.ones((6, 5), dtype=bool)
    masks = NiftiMasks({"cine": volume}, n_labels=2)
    masks.add(image, np.stack([diagonal, everything]))
    masks.add(loose, np.ones((2, 6, 5), dtype=bool))  # not from a volume: not placed
    assert masks.write(tmp_path, ["endo", "epi"]) == ["cine-endo.nii.gz", "cine-epi.nii.gz"]
    endo = np.asarray(nib.load(tmp_path / "cine-endo.nii.gz").dataobj)
    epi = np.asarray(nib.load(tmp_path / "cine-epi.nii.gz").dataobj)
    assert endo.sum() == 5 and endo[:, :, 1, 2].sum() == 5 and epi.sum() == 30 and epi[:, :, 1, 2].all()

    acdc_masks = NiftiMasks({"cine": volume}, n_labels=3)
    lv = np.zeros((6, 5), dtype=bool)
    lv[4:, 3:] = True
    acdc_masks.add(image, np.stack([diagonal & ~lv, ~diagonal & ~lv, lv]))  # rv, myo, lv
    assert acdc_masks.write(tmp_path, ["rv", "myo", "lv"]) == ["cine.nii.gz"]
    values = np.asarray(nib.load(tmp_path / "cine.nii.gz").dataobj)[:, :, 1, 2]
    expected = np.where(lv, 3, np.where(diagonal, 1, 2))
    np.testing.assert_array_equal(values, expected)


def test_acdc_labels_never_overlap_so_label_maps_areas_and_volumes_agree():
    """A pixel predicted as RV and LV keeps the more probable; nested labels (endo, epi) keep both."""
    scores = np.zeros((3, 6, 6), dtype=np.float32)
    scores[0, 1:4, 1:4] = 0.9  # rv
    scores[2, 2:5, 2:5] = 0.7  # lv, overlapping rv on 2:4 x 2:4
    scores[2, 3, 3] = 0.95  # where lv is more probable
    (masks,) = postprocess_scores([scores], "none", exclusive=True)
    assert masks.sum(axis=0).max() == 1
    assert masks[0, 2, 2] and not masks[2, 2, 2] and masks[2, 3, 3] and not masks[0, 3, 3]
    assert masks[0].sum() == 9 - 1 and masks[2].sum() == 9 - 3
    (nested,) = postprocess_scores([scores[:2]], "none")  # exclusive off: overlap kept
    assert (nested == (scores[:2] > 0.5)).all()


def test_exclusive_labels_under_a_region_rule_keep_one_region_each_and_the_myocardial_ring():
    """The region rule fills the myocardium's ring into a disk over the LV cavity; the contest gives the
    cavity back, and each label is one region again (RV cut in two by a more probable myocardium keeps
    its larger part)."""
    scores = np.zeros((3, 20, 20), dtype=np.float32)
    scores[1, 4:16, 4:16] = 0.8  # myo ring, 2 px thick
    scores[1, 6:14, 6:14] = 0.0
    scores[2, 6:14, 6:14] = 0.9  # lv inside it
    scores[0, 0:3, 2:19] = 0.7  # rv strip above, crossed by a more probable myo bridge at columns 9-10
    scores[1, 0:4, 9:11] = 0.95
    (masks,) = postprocess_scores([scores], "largest", exclusive=True)
    assert masks.sum(axis=0).max() == 1
    assert masks[1].sum() == 12 * 12 - 8 * 8 + 4 * 2  # the ring (its hole is the LV's) and the bridge
    assert masks[2].sum() == 64
    assert masks[0].sum() == 3 * 8 and masks[0][:, 11:].any() and not masks[0][:, :9].any()  # the larger part


def read_nifti_fixture(folder: Path, shape: tuple[int, ...]):
    from rvseg.data.nifti import read_nifti

    nib.save(nib.Nifti1Image(np.zeros(shape, dtype=np.int16), np.eye(4)), folder / "volume.nii.gz")
    return read_nifti(folder / "volume.nii.gz")


def test_single_slice_nifti_files_of_one_cine_form_one_stack(checkpoint, phantom, dicom_prediction, tmp_path):
    """dcm2niix's output for a cine acquired slice by slice: one (I, J, 1, T) file per slice position."""
    cine, spacing = phantom_cine(phantom)
    (tmp_path / "sax").mkdir()
    for s in range(PHANTOM_SLICES):
        affine = np.diag([spacing[0], spacing[1], 7.0, 1.0])
        affine[2, 3] = 7.0 * s
        nib.save(nib.Nifti1Image(cine[:, :, s : s + 1], affine), tmp_path / "sax" / f"cine_sax_{s + 1}.nii.gz")
    other = np.diag([spacing[0], spacing[1], 7.0, 1.0])
    other[:3, :2] = [[0, spacing[1]], [0, 0], [spacing[0], 0]]  # another plane (a long-axis view)
    nib.save(nib.Nifti1Image(cine[:, :, :1], other), tmp_path / "sax" / "cine_4ch.nii.gz")
    summary = predict([checkpoint], tmp_path / "sax", tmp_path / "pred")
    stacks = {row["id"].split("-")[0]: row["stack"] for row in read_csv(tmp_path / "pred" / "predictions.csv")}
    assert stacks == {"cine_sax_1": "sax", "cine_sax_2": "sax", "cine_sax_3": "sax", "cine_4ch": "cine_4ch"}
    expected = dicom_prediction[1]["volumes"]["P01"]
    for key in ("slice_spacing_mm", "ed_volume_ml", "es_volume_ml", "ef_percent"):
        assert summary["volumes"]["sax"][key] == pytest.approx(expected[key], rel=1e-6)
    assert "cine_4ch: one slice position, so no volume" in summary["notes"]
    joined = "3 single-slice images joined into one stack, 7.00 mm apart (cine_sax_1 ... cine_sax_3)"
    assert f"{tmp_path / 'sax'}: {joined}" in summary["notes"]


def test_an_acdc_cine_with_a_bad_info_cfg_or_a_frame_it_lacks(checkpoint, phantom, tmp_path):
    cine, spacing = phantom_cine(phantom)
    folder = write_acdc_patient(tmp_path, cine, spacing, {1: 0}, "ED: 1\nES: 12\n")
    summary = predict([checkpoint], folder / "patient101_4d.nii.gz", tmp_path / "pred")
    assert (f"{folder / 'patient101_4d.nii.gz'}: Info.cfg gives ES as frame 12, which the cine's {PHANTOM_FRAMES} "
            "frames do not have") in summary["notes"]
    (folder / "Info.cfg").write_text("ED: first\n")
    summary = predict([checkpoint], folder / "patient101_4d.nii.gz", tmp_path / "pred2")
    assert any(note.startswith(f"{folder / 'Info.cfg'}: ED should be a frame number") and
               note.endswith("the phases of patient101_4d.nii.gz are inferred") for note in summary["notes"])
    assert summary["volumes"]["patient101_4d"]["es_rule"] == "min-total-volume"
    (folder / "Info.cfg").write_text("ED: 1\n")  # no ES: inferred from the cine, not left out
    summary = predict([checkpoint], folder / "patient101_4d.nii.gz", tmp_path / "pred3")
    assert f"{folder / 'Info.cfg'}: gives a frame of the cine only for ED; the phases of patient101_4d.nii.gz are " \
           "inferred" in summary["notes"]
    volumes = summary["volumes"]["patient101_4d"]
    assert volumes["es_rule"] == "min-total-volume" and volumes["ef_percent"] is not None


def test_an_rvsc_root_reads_nifti_in_dicom_folders_and_lists_what_it_leaves(checkpoint, phantom, tmp_path, capsys):
    """A NIfTI inside PNNdicom/ is segmented (no crash); contour, list and other files are listed as ignored."""
    root = tmp_path / "TrainingSet"
    shutil.copytree(phantom / "patient01", root / "patient01")
    cine, spacing = phantom_cine(phantom)
    save_nifti(root / "patient01" / "P01dicom" / "extra.nii.gz", cine[..., 0], spacing)
    (root / "notes.md").write_text("study notes\n")
    out = tmp_path / "pred"
    assert main(["predict", str(checkpoint), str(root), "--out", str(out), "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["nifti_masks"] == ["extra.nii.gz"]
    assert summary["n_images"] == PHANTOM_SLICES * PHANTOM_FRAMES + PHANTOM_SLICES
    reasons = Counter(item["reason"] for item in summary["ignored"])
    contours = list((root / "patient01").glob("P01contours-manual/*.txt"))
    assert reasons["a contour file"] == len(contours) > 0
    assert reasons["not in an RVSC patient's PNNdicom folder (give it on its own to segment it)"] >= 1
    assert f"  left {summary['n_ignored']} file(s) alone (ignored.csv says why)" in capsys.readouterr().out


def test_two_nifti_images_of_one_name_in_two_rvsc_patients_are_refused(checkpoint, phantom, tmp_path):
    root = tmp_path / "TrainingSet"
    cine, spacing = phantom_cine(phantom)
    for patient in ("01", "02"):
        shutil.copytree(phantom / f"patient{patient}", root / f"patient{patient}")
        save_nifti(root / f"patient{patient}" / f"P{patient}dicom" / "extra.nii.gz", cine[..., 0], spacing)
    with pytest.raises(DataError, match="second NIfTI image named extra") as error:
        predict([checkpoint], root, tmp_path / "pred")
    assert "P02dicom" in str(error.value) and not (tmp_path / "pred").exists()


def test_a_prepared_stack_with_some_plane_positions_missing_is_placed_by_slice_locations(shared_data, tmp_path):
    """One unit per stack: a patient with one sample lacking its plane position loses them all (its
    volume then steps by GE's table-axis SliceLocation, as rvseg evaluate does), with a note."""
    from rvseg.data.dataset import load_dataset
    from rvseg.data.sources import prepared_images

    prepare(shared_data / "sunnybrook-subset", tmp_path / "prepared")
    data = load_dataset(tmp_path / "prepared")
    images, notes = prepared_images(data)
    assert notes == [] and all(image.position_mm is not None for image in images)
    first = next(k for k, row in enumerate(data.rows) if row["patient"] == "SCD0000101")
    data.rows[first]["position_mm"] = ""
    images, notes = prepared_images(data)
    members = [image for image in images if image.stack == "SCD0000101"]
    assert all(image.position_mm is None and image.slice_location is not None for image in members)
    assert all(image.position_mm is not None for image in images if image.stack != "SCD0000101")
    assert notes == [f"SCD0000101: 1 of {len(members)} images have no plane position, so its slices are placed by "
                     "their slice locations"]

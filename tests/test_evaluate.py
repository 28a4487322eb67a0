"""rvseg evaluate on the shared RVSC training set, splits, units, output folder, figures."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from skimage.io import imread

import rvseg.evaluate as evaluate_module
from rvseg.cli import main, parse_arguments
from rvseg.data.dataset import load_dataset
from rvseg.data.phantom import write_phantom
from rvseg.data.prepare import PrepareOptions, prepare
from rvseg.errors import ConfigError, DataError
from rvseg.evaluate import (
    case_rows,
    cavity_volumes,
    cv_coverage_note,
    evaluate,
    fold_mean_interval,
    read_scores,
    slice_levels,
    split_indices,
    stack_keys,
)
from rvseg.inference import Predictor, check_prepared_compatible
from rvseg.io import checksum
from rvseg.metrics import segmentation_metrics
from rvseg.postprocess import postprocess_scores, single_region
from rvseg.report.figures import ExamplePanel, draw_dice_histogram, draw_examples, overlay_image
from rvseg.train.checkpoint import model_from_checkpoint
from rvseg.train.config import TrainConfig
from rvseg.train.loop import train

VAL_PATIENTS = ["P15", "P16"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run this module's tiny models on one thread (faster at 64 x 56), restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def rvsc(shared_data, tmp_path_factory) -> Path:
    """The shared RVSC training set (243 slices, 128 x 108 PNG pairs) prepared at 64 x 56."""
    out = tmp_path_factory.mktemp("evaluate") / "rvsc"
    prepare(shared_data / "rvsc-train-png", out, PrepareOptions(size=(64, 56)))
    return out


@pytest.fixture(scope="module")
def run(rvsc) -> Path:
    """A tiny U-Net trained for a few seconds on 15% of the training slices, validated on P15 and P16."""
    folder = rvsc.parent / "run"
    config = TrainConfig(width=8, depth=2, epochs=4, batch_size=8, lr=0.01, fraction=0.15, device="cpu",
                         augment=False, val_patients=VAL_PATIENTS)
    train(rvsc, folder, config, verbose=False)
    return folder


@pytest.fixture(scope="module")
def cli_evaluation(run, rvsc) -> tuple[Path, dict]:
    out = rvsc.parent / "eval"
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        code = main(["evaluate", str(run), str(rvsc), "--split", "val", "--out", str(out), "--json", "--device", "cpu"])
    assert code == 0
    return out, json.loads(stdout.getvalue())


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_evaluate_the_val_split_of_the_shared_rvsc_set(cli_evaluation, rvsc, run):
    out, printed = cli_evaluation
    summary = json.loads((out / "summary.json").read_text())
    assert printed == summary
    samples = [row for row in read_csv(rvsc / "samples.csv") if row["patient"] in VAL_PATIENTS]
    per_case = read_csv(out / "per_case.csv")
    assert [row["id"] for row in per_case] == [row["id"] for row in samples]
    assert {row["label"] for row in per_case} == {"endo"}
    assert summary["split"] == "val" and summary["patients"] == VAL_PATIENTS
    assert summary["n_samples"] == len(samples)
    assert summary["same_data_as_training"] is True
    assert summary["checkpoints"] == [str(run / "best.pt")]
    assert summary["checkpoint_checksums"] == [checksum(run / "best.pt")]

    endo = summary["labels"]["endo"]
    assert endo["n"] == endo["overall"]["n"] == len(samples)
    assert sorted(endo["by_patient"]) == VAL_PATIENTS
    for phase in ("ED", "ES"):
        assert endo["by_phase"][phase]["n"] == sum(row["phase"] == phase for row in samples)
        assert endo["table"][phase]["n"] == endo["by_phase"][phase]["n"]
    # The summary aggregates exactly the per-case rows.
    dice = np.array([float(row["dice"]) for row in per_case])
    assert endo["overall"]["metrics"]["dice"]["mean"] == pytest.approx(dice.mean(), abs=1e-6)
    assert endo["table"]["all"]["dice_sd"] == pytest.approx(dice.std(ddof=1), abs=1e-5)
    hd = np.array([float(row["hd"]) for row in per_case if row["hd"]])
    assert endo["overall"]["metrics"]["hd"]["n"] == endo["table"]["all"]["hd_n"] == len(hd)
    assert endo["overall"]["n_hd_undefined"] == len(per_case) - len(hd)
    assert endo["overall"]["n_one_empty"] == sum(row["empty"] in ("pred", "ref") for row in per_case)
    # rvsc-train-png has no pixel spacing: distances in pixels, and the summary says so.
    assert summary["units"] == "px" and {row["unit"] for row in per_case} == {"px"}
    assert f"{len(per_case)} of {len(per_case)} rows" in summary["unit_note"]

    for name in ("examples_best.png", "examples_worst.png", "dice_histogram.png"):
        picture = imread(out / name)
        assert picture.ndim == 3 and min(picture.shape[:2]) > 200, name
    assert sorted(path.name for path in out.iterdir()) == sorted(Path(path).name for path in summary["files"].values())


def test_slice_levels_run_from_base_to_apex(cli_evaluation):
    out, summary = cli_evaluation
    per_case = read_csv(out / "per_case.csv")
    p15_ed = sorted((int(row["slice"]), row["slice_level"]) for row in per_case if row["id"].startswith("P15")
                    and row["phase"] == "ED")
    # rvsc-train-png numbers the slices from the base (largest RV) down: 7 ED slices of P15 in thirds
    assert [level for _, level in p15_ed] == ["base"] * 3 + ["mid"] * 2 + ["apex"] * 2
    by_level = summary["labels"]["endo"]["by_slice_level"]
    assert list(by_level) == ["base", "mid", "apex"]
    assert sum(group["n"] for group in by_level.values()) == len(per_case)
    apex = [float(row["dice"]) for row in per_case if row["slice_level"] == "apex"]
    assert by_level["apex"]["metrics"]["dice"]["mean"] == pytest.approx(np.mean(apex), abs=1e-6)


def test_the_printed_summary(run, rvsc, tmp_path, capsys):
    assert main(["evaluate", str(run), str(rvsc), "--out", str(tmp_path / "e"), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())["labels"]["endo"]
    all_dice = summary["table"]["all"]["dice_mean"]
    assert f"endo all (n={summary['n']}): Dice {all_dice:.3f}" in printed
    apex = summary["by_slice_level"]["apex"]
    assert "endo Dice by slice level: base " in printed
    assert f"apex {apex['metrics']['dice']['mean']:.3f} (n={apex['n']})" in printed


def test_slice_levels_and_stacks_orientation_ties_and_short_stacks():
    def sample(patient, phase, location, area, present=True, slice_number=""):
        return {"patient": patient, "phase": phase, "slice_location": location, "slice": slice_number,
                "area": area, "present": present}

    rows = [sample("A", "ED", str(z), area) for z, area in ((-30, 50), (-20, 80), (-10, 300), (0, 500))]  # base last
    rows += [sample("B", "ES", "2", 10), sample("B", "ES", "1", 20)]  # two positions: base and apex
    rows += [sample("C", "ES", "5", 30)]  # alone
    rows += [sample("C", "ED", "", 40), sample("C", "ED", "-4", 50)]  # a member without location, no slice number
    # phase unknown: two frames per location share their level
    rows += [sample("D", "unknown", str(z), area) for z in (0, 10, 20) for area in (400 - 10 * z, 300 - 10 * z)]
    rows += [sample("E", "ED", str(z), 0, present=False) for z in (0, 10, 20)]  # no reference to orient by
    rows += [sample("F", "ED", "", area, slice_number=str(k)) for k, area in ((1, 9), (2, 5), (3, 1))]
    masks = np.zeros((len(rows), 1, 30, 30), dtype=np.uint8)
    for index, row in enumerate(rows):
        masks[index, 0].flat[: row["area"]] = 1
    present = np.array([[row["present"]] for row in rows])
    levels = slice_levels(SimpleNamespace(rows=rows, masks=masks, present=present), range(len(rows)), 0)
    levels = [levels[i] for i in range(len(rows))]
    assert levels[:4] == ["apex", "mid", "base", "base"]
    assert levels[4:9] == ["apex", "base", "unknown", "unknown", "unknown"]
    assert levels[9:15] == ["base", "base", "mid", "mid", "apex", "apex"]
    assert levels[15:18] == ["unknown"] * 3
    assert levels[18:] == ["base", "mid", "apex"]  # slice numbers when no sample has a location
    # the stacks of the ``stack`` post-processing: ED / ES only, and only with a position for every member
    stacks, positions = stack_keys(SimpleNamespace(rows=rows), range(len(rows)))
    assert stacks == [("A", "ED")] * 4 + [("B", "ES")] * 2 + [("C", "ES")] + [None] * 8 + [("E", "ED")] * 3 + [
        ("F", "ED")] * 3
    assert positions == [-30, -20, -10, 0, 2, 1, 5] + [None] * 8 + [0, 10, 20, 1, 2, 3]


def test_per_case_metrics_match_the_model_run_directly(cli_evaluation, rvsc, run):
    """Wiring: each row equals the network's own thresholded output on the cropped sample, post-processed by
    the default ``stack`` rule over the samples of one patient and phase, ordered by slice number."""
    out, printed = cli_evaluation
    assert printed["settings"]["postprocess"] == "stack"
    per_case = {row["id"]: row for row in read_csv(out / "per_case.csv")}
    data = load_dataset(rvsc)
    model, _, _ = model_from_checkpoint(run)
    indices = data.indices_of_patients(VAL_PATIENTS)
    scores = []
    for index in indices:
        height, width = int(data.rows[index]["height"]), int(data.rows[index]["width"])
        with torch.no_grad():
            logits = model(torch.from_numpy(data.images[index:index + 1, :, :height, :width]))
        scores.append(torch.sigmoid(logits)[0].numpy())
    stacks = [(data.rows[i]["patient"], data.rows[i]["phase"]) for i in indices]
    positions = [float(data.rows[i]["slice"]) for i in indices]
    predicted = postprocess_scores(scores, "stack", stacks, positions)
    for index, mask in zip(indices, predicted, strict=True):
        row = data.rows[index]
        height, width = int(row["height"]), int(row["width"])
        expected = segmentation_metrics(mask[0], data.masks[index, 0, :height, :width] > 0, None)
        written = per_case[row["id"]]
        for name in ("dice", "jaccard", "area_pred", "area_ref"):
            assert float(written[name]) == pytest.approx(expected[name], rel=1e-5), (row["id"], name)
        assert written["empty"] == expected["empty"]


def test_saved_scores_are_the_models_probabilities_and_give_the_masks_scored(run, rvsc, tmp_path):
    """``--save-scores``: the sigmoid of the network on each cropped val sample, in per_case.csv's order,
    post-processed by the stack rule they give exactly the masks whose metrics were written."""
    out = tmp_path / "eval"
    assert main(["evaluate", str(run), str(rvsc), "--out", str(out), "--save-scores", "--device", "cpu"]) == 0
    ids, labels, scores = read_scores(out / "scores.npz")
    data = load_dataset(rvsc)
    indices = data.indices_of_patients(VAL_PATIENTS)
    assert ids == [data.rows[i]["id"] for i in indices] and labels == ["endo"]
    model, _, _ = model_from_checkpoint(run)
    for index, score in zip(indices, scores, strict=True):
        height, width = int(data.rows[index]["height"]), int(data.rows[index]["width"])
        with torch.no_grad():
            expected = torch.sigmoid(model(torch.from_numpy(data.images[index:index + 1, :, :height, :width])))[0]
        assert score.shape == (1, height, width)
        np.testing.assert_allclose(score, expected.numpy(), atol=1e-6)
    stacks, positions = stack_keys(data, indices)
    masks = postprocess_scores(scores, "stack", stacks, positions)
    per_case = read_csv(out / "per_case.csv")
    for index, mask, row in zip(indices, masks, per_case, strict=True):
        height, width = int(data.rows[index]["height"]), int(data.rows[index]["width"])
        reference = data.masks[index, 0, :height, :width] > 0
        assert float(row["dice"]) == pytest.approx(segmentation_metrics(mask[0], reference, None)["dice"], rel=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["save_scores"] is True and "scores.npz" in summary["files"]
    with pytest.raises(ConfigError, match="output folder"):
        evaluate(run, rvsc, save_scores=True)
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="broken.npz"):
        read_scores(tmp_path / "broken.npz")


def test_the_stack_rule_gets_each_patient_and_phase_as_a_stack(run, rvsc, monkeypatch):
    """Wiring: the scores of every val sample reach the post-processing with its (patient, phase) and slice
    number (the shared RVSC set has no slice locations), and ``--postprocess largest`` passes its rule on."""
    calls = []

    def spy(scores, rule, stacks, positions, exclusive):
        calls.append((rule, stacks, positions))
        assert not exclusive  # endo alone (and endo with epi) may overlap
        return postprocess_scores(scores, rule, stacks, positions, exclusive=exclusive)

    monkeypatch.setattr(evaluate_module, "postprocess_scores", spy)
    data = load_dataset(rvsc)
    indices = data.indices_of_patients(VAL_PATIENTS)
    evaluate(run, rvsc, split="val", device="cpu")
    evaluate(run, rvsc, split="val", device="cpu", postprocess="largest")
    assert [rule for rule, _, _ in calls] == ["stack", "largest"]
    rule, stacks, positions = calls[0]
    assert stacks == [(data.rows[i]["patient"], data.rows[i]["phase"]) for i in indices]
    assert positions == [float(data.rows[i]["slice"]) for i in indices]
    assert {phase for _, phase in stacks} == {"ED", "ES"}


def test_distances_and_areas_in_mm_with_spacing(run, tmp_path):
    write_phantom(tmp_path / "phantom", patients=1, slices=2, frames=3, seed=2)
    prepare(tmp_path / "phantom", tmp_path / "prepared", PrepareOptions(size=(64, 56)))
    summary = evaluate(run, tmp_path / "prepared", split="all", out=tmp_path / "eval", device="cpu")
    assert summary["units"] == "mm" and "unit_note" not in summary
    samples = {row["id"]: row for row in read_csv(tmp_path / "prepared" / "samples.csv")}
    for row in read_csv(tmp_path / "eval" / "per_case.csv"):
        sample = samples[row["id"]]
        pixel_area = float(sample["spacing_mm"]) * float(sample["spacing_col_mm"])
        assert row["unit"] == "mm"
        assert float(row["area_ref"]) == pytest.approx(int(sample["area_px_endo"]) * pixel_area, rel=1e-5)


def test_rv_volumes_and_ejection_fraction_against_the_reference(run, tmp_path, capsys):
    """Per patient EDV/ESV/EF from the reference and the predicted masks (summation of discs over the
    slice spacing), their errors, their agreement, volumes.csv and the printed line."""
    write_phantom(tmp_path / "phantom", patients=3, slices=3, frames=4, seed=3)
    prepare(tmp_path / "phantom", tmp_path / "prepared", PrepareOptions(size=(64, 56)))
    assert main(["evaluate", str(run), str(tmp_path / "prepared"), "--split", "all", "--out", str(tmp_path / "eval"),
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    volumes = json.loads((tmp_path / "eval" / "summary.json").read_text())["volumes"]
    assert volumes["label"] == "endo" and volumes["notes"] == [
        "areas are counted at the prepared size 64 x 56: the reference volumes are those of the resampled masks, "
        "not of the original contours"]
    assert sorted(volumes["patients"]) == ["P01", "P02", "P03"]
    samples = {row["id"]: row for row in read_csv(tmp_path / "prepared" / "samples.csv")}
    rows = [row for row in read_csv(tmp_path / "eval" / "per_case.csv") if row["label"] == "endo"]
    csv_rows = {row["patient"]: row for row in read_csv(tmp_path / "eval" / "volumes.csv")}
    for patient, item in volumes["patients"].items():
        locations = sorted({float(samples[row["id"]]["slice_location"]) for row in rows if row["patient"] == patient})
        spacing = float(np.median(np.diff(locations)))
        assert item["slices"] == len(locations) >= 2 and spacing == pytest.approx(7.0, rel=1e-4)
        ml = {(side, phase): sum(float(row[f"area_{side}"]) for row in rows
                                 if row["patient"] == patient and row["phase"] == phase) * spacing / 1000
              for side in ("ref", "pred") for phase in ("ED", "ES")}
        assert item["ed_volume_ml"]["truth"] == pytest.approx(ml["ref", "ED"], rel=1e-4)
        assert item["es_volume_ml"]["pred"] == pytest.approx(ml["pred", "ES"], rel=1e-4)
        ef_truth = 100 * (ml["ref", "ED"] - ml["ref", "ES"]) / ml["ref", "ED"]
        assert item["ef_percent"]["truth"] == pytest.approx(ef_truth, rel=1e-4)
        assert item["ed_volume_ml"]["error"] == pytest.approx(ml["pred", "ED"] - ml["ref", "ED"], rel=1e-4, abs=1e-9)
        assert float(csv_rows[patient]["es_volume_ml_truth"]) == pytest.approx(ml["ref", "ES"], rel=1e-4)
    errors = [item["ef_percent"]["error"] for item in volumes["patients"].values()]
    assert volumes["agreement"]["ef_percent"]["n"] == 3
    assert volumes["agreement"]["ef_percent"]["bias"] == pytest.approx(np.mean(errors))
    assert volumes["agreement"]["ef_percent"]["sd"] == pytest.approx(np.std(errors, ddof=1))
    ed = volumes["agreement"]["ed_volume_ml"]
    assert volumes["chamber"] == "RV" and "  RV volumes from endo, predicted - reference over patients:" in printed
    assert f"    EDV bias {ed['bias']:.1f} mL (sd {ed['sd']:.1f}, MAE {ed['mae']:.1f}, r " in printed
    assert f"    EF bias {volumes['agreement']['ef_percent']['bias']:.1f} points" in printed


def reference_volumes(data_path: Path, keep=lambda row: True) -> dict:
    """:func:`cavity_volumes` with the reference masks as the prediction (no model), over the rows kept."""
    data = load_dataset(data_path)
    indices = list(range(len(data.rows)))
    channels = list(range(len(data.labels)))
    masks = [data.masks[i, :, : int(data.rows[i]["height"]), : int(data.rows[i]["width"])] > 0 for i in indices]
    rows = [row for row in case_rows(data, indices, masks, data.labels, channels) if keep(row)]
    return cavity_volumes(data, rows, data.labels)


def test_reference_volumes_equal_the_phantoms_own(tmp_path):
    write_phantom(tmp_path / "phantom", patients=3, slices=3, frames=4, seed=3)
    prepare(tmp_path / "phantom", tmp_path / "native", PrepareOptions())
    volumes = reference_volumes(tmp_path / "native")
    truth = {item["patient"]: item for item in json.loads((tmp_path / "phantom" / "phantom.json").read_text())["truth"]}
    assert sorted(volumes["patients"]) == sorted(truth)
    for patient, item in volumes["patients"].items():
        for key in ("ed_volume_ml", "es_volume_ml", "ef_percent"):
            assert item[key]["truth"] == pytest.approx(truth[patient][key], rel=1e-6)
            assert item[key]["error"] == 0
    assert volumes["agreement"]["ef_percent"] == {"n": 3, "bias": 0.0, "sd": 0.0, "mae": 0.0, "r": pytest.approx(1.0)}

    # A patient left with one slice location gets no volume, and a note says so.
    first = min(float(row["slice"]) for row in read_csv(tmp_path / "native" / "samples.csv") if row["patient"] == "P02")
    one_slice = reference_volumes(tmp_path / "native",
                                  keep=lambda row: row["patient"] != "P02" or float(row["slice"]) == first)
    assert "P02" not in one_slice["patients"]
    assert "P02: no volume (fewer than two slice locations with a usable ED or ES sample)" in one_slice["notes"]


def test_reference_volumes_of_real_rvsc_patient09(shared_data, tmp_path):
    """Slices 8.4 mm apart (7 mm thick): ED on two slices, ES only on the apical one, as the experts drew it;
    the basal slice counts as empty at ES, so the EF is defined."""
    prepare(shared_data / "rvsc-native" / "patient09", tmp_path / "p09", PrepareOptions())
    volumes = reference_volumes(tmp_path / "p09")
    samples = {row["id"]: row for row in read_csv(tmp_path / "p09" / "samples.csv")}
    pixel = float(samples["P09-0020"]["spacing_mm"]) * float(samples["P09-0020"]["spacing_col_mm"])
    area = {frame: int(samples[f"P09-{frame:04d}"]["area_px_endo"]) * pixel for frame in (20, 22, 23)}
    item = volumes["patients"]["P09"]
    assert item["slice_spacing_mm"] == pytest.approx(8.4, abs=1e-3) and (item["ed_slices"], item["es_slices"]) == (2, 2)
    assert item["ed_volume_ml"]["truth"] == pytest.approx((area[20] + area[22]) * 8.4 / 1000, rel=1e-4)
    assert item["es_volume_ml"]["truth"] == pytest.approx(area[23] * 8.4 / 1000, rel=1e-4)
    assert item["ef_percent"]["truth"] == pytest.approx(100 * (1 - area[23] / (area[20] + area[22])), rel=1e-4)
    assert "P09: ES is contoured on 1 of 2 ED slices; the other 1 count as empty at ES" in volumes["notes"]


def test_sunnybrook_cavities_are_the_left_ventricle(shared_data, tmp_path):
    prepare(shared_data / "sunnybrook-subset", tmp_path / "scd", PrepareOptions())
    volumes = reference_volumes(tmp_path / "scd")
    assert volumes["chamber"] == "LV" and volumes["label"] == "endo" and len(volumes["patients"]) == 5


def test_no_volumes_without_pixel_spacing(cli_evaluation):
    _, summary = cli_evaluation
    volumes = summary["volumes"]
    assert volumes["label"] == "endo" and volumes["patients"] == {}
    assert volumes["notes"] == [f"{summary['n_samples']} sample(s) left out: no pixel spacing"]
    assert "volumes.csv" not in summary["files"]


def test_splits(rvsc):
    data = load_dataset(rvsc)
    info = {"train_patients": [f"P{k:02d}" for k in range(1, 11)], "val_patients": ["P11", "P12"]}
    indices, patients = split_indices(data, [info], "test")
    assert patients == ["P13", "P14", "P15", "P16"]
    assert sorted({data.rows[i]["patient"] for i in indices}) == patients
    assert len(split_indices(data, [info], "all")[0]) == 243
    assert split_indices(data, [info], "val")[1] == ["P11", "P12"]
    everyone = {"train_patients": data.patients[2:], "val_patients": data.patients[:2]}
    with pytest.raises(DataError, match="no test patient"):
        split_indices(data, [everyone], "test")
    with pytest.raises(DataError, match="validation patients"):
        split_indices(data, [{"train_patients": [], "val_patients": ["X1"]}], "val")


def test_splits_of_an_ensemble(rvsc):
    """Seeds of one split share its val patients; folds have none in common, and test leaves out all they saw."""
    data = load_dataset(rvsc)
    folds = [{"train_patients": [f"P{k:02d}" for k in range(1, 13) if (k - 1) // 4 != fold],
              "val_patients": [f"P{k:02d}" for k in range(1, 13) if (k - 1) // 4 == fold]} for fold in range(3)]
    assert split_indices(data, folds, "test")[1] == ["P13", "P14", "P15", "P16"]
    assert split_indices(data, [folds[1], dict(folds[1])], "val")[1] == ["P05", "P06", "P07", "P08"]
    with pytest.raises(ConfigError, match="validated on different patients"):
        split_indices(data, folds, "val")


def test_an_ensemble_is_scored_on_its_mean_probability(run, rvsc, tmp_path):
    second = tmp_path / "second"
    train(rvsc, second, TrainConfig(width=8, depth=2, epochs=2, batch_size=8, lr=0.01, fraction=0.15, seed=7,
                                    device="cpu", augment=False, val_patients=VAL_PATIENTS), verbose=False)
    summary = evaluate([run, second], rvsc, split="val", out=tmp_path / "eval", device="cpu", postprocess="largest")
    assert summary["checkpoints"] == [str(run / "best.pt"), str(second / "best.pt")]
    assert summary["settings"]["ensemble"] == "mean"
    per_case = {row["id"]: row for row in read_csv(tmp_path / "eval" / "per_case.csv")}
    data = load_dataset(rvsc)
    models = [model_from_checkpoint(folder)[0].eval() for folder in (run, second)]
    for index in data.indices_of_patients(VAL_PATIENTS)[:5]:
        row = data.rows[index]
        height, width = int(row["height"]), int(row["width"])
        image = torch.from_numpy(data.images[index:index + 1, :, :height, :width])
        with torch.no_grad():
            mean = torch.stack([torch.sigmoid(model(image))[0, 0] for model in models]).mean(0)
        expected = segmentation_metrics(single_region(mean.numpy() > 0.5), data.masks[index, 0, :height, :width] > 0,
                                        None)
        assert float(per_case[row["id"]]["dice"]) == pytest.approx(expected["dice"], rel=1e-5), row["id"]


@pytest.fixture(scope="module")
def fold_runs(run, rvsc) -> dict[str, Path]:
    """Runs validated on P15+P16 (``run`` and a second seed of it), on P13+P14 and on P14+P15 (which
    overlaps both)."""
    folders = {"p15-seed0": run}
    for name, val, seed in (("p15-seed1", VAL_PATIENTS, 1), ("p13", ["P13", "P14"], 0), ("p14", ["P14", "P15"], 0)):
        folders[name] = rvsc.parent / f"fold-{name}"
        train(rvsc, folders[name], TrainConfig(width=8, depth=2, epochs=2, batch_size=8, lr=0.01, fraction=0.15,
                                               seed=seed, device="cpu", augment=False, val_patients=val), verbose=False)
    return folders


def test_cross_validation_pools_the_folds_each_scored_on_its_own_patients(fold_runs, rvsc, tmp_path):
    """--cv: the two seeds validated on P15+P16 are one fold's ensemble, the P13+P14 run the other fold;
    every figure equals that of the folds evaluated one by one."""
    runs = [fold_runs["p15-seed0"], fold_runs["p13"], fold_runs["p15-seed1"]]
    summary = evaluate(runs, rvsc, out=tmp_path / "cv", cv=True, device="cpu")
    alone = [evaluate(members, rvsc, out=tmp_path / f"alone{k}", device="cpu")
             for k, members in enumerate([[runs[0], runs[2]], [runs[1]]])]
    assert [fold["patients"] for fold in summary["folds"]] == [["P15", "P16"], ["P13", "P14"]]
    assert [len(fold["checkpoints"]) for fold in summary["folds"]] == [2, 1]
    assert summary["patients"] == ["P13", "P14", "P15", "P16"]
    assert summary["n_samples"] == sum(one["n_samples"] for one in alone)
    assert summary["settings"]["cv"] and summary["settings"]["ensemble"] == "mean"
    pooled = {(row["id"], row["label"]): float(row["dice"]) for row in read_csv(tmp_path / "cv" / "per_case.csv")}
    by_one = {(row["id"], row["label"]): float(row["dice"])
              for k in range(2) for row in read_csv(tmp_path / f"alone{k}" / "per_case.csv")}
    assert pooled == pytest.approx(by_one)
    fold_dice = [one["labels"]["endo"]["overall"]["metrics"]["dice"]["mean"] for one in alone]
    assert [fold["labels"]["endo"]["metrics"]["dice"]["mean"] for fold in summary["folds"]] == pytest.approx(fold_dice)
    assert summary["fold_mean"]["endo"]["dice"] == pytest.approx(np.mean(fold_dice))
    pooled_dice = summary["labels"]["endo"]["overall"]["metrics"]["dice"]["mean"]
    assert pooled_dice == pytest.approx(np.mean(list(by_one.values())))
    assert fold_dice[0] != pytest.approx(fold_dice[1])  # so that the pooled mean and the fold mean differ meaningfully


def test_checkpoint_files_of_one_run_are_one_folds_ensemble(fold_runs, rvsc):
    """As an --snapshots run's cycle ends are evaluated: ``RUN/snapshot-0350.pt RUN/snapshot-0750.pt``."""
    run = fold_runs["p15-seed0"]
    summary = evaluate([run / "best.pt", fold_runs["p13"], run / "last.pt"], rvsc, cv=True, device="cpu")
    assert [fold["checkpoints"] for fold in summary["folds"]] == [[str(run / "best.pt"), str(run / "last.pt")],
                                                                  [str(fold_runs["p13"] / "best.pt")]]


def test_cross_validation_refusals(fold_runs, rvsc, tmp_path, capsys):
    with pytest.raises(ConfigError, match="at least two folds.*P15, P16"):
        evaluate([fold_runs["p15-seed0"], fold_runs["p15-seed1"]], rvsc, cv=True)
    with pytest.raises(ConfigError, match="--split val, not test"):
        evaluate([fold_runs["p15-seed0"], fold_runs["p13"]], rvsc, split="test", cv=True)
    with pytest.raises(ConfigError, match="patient P15 is validated by two folds"):
        evaluate([fold_runs["p15-seed0"], fold_runs["p14"]], rvsc, cv=True)
    capsys.readouterr()
    code = main(["evaluate", str(fold_runs["p13"]), str(fold_runs["p14"]), str(rvsc), "--cv", "--out",
                 str(tmp_path / "e")])
    assert code == 2 and not (tmp_path / "e").exists()
    assert capsys.readouterr().err.count("\n") == 1


def test_the_printed_cross_validation(fold_runs, rvsc, tmp_path, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(fold_runs["p15-seed0"]), str(fold_runs["p13"]), str(rvsc), "--cv", "--out",
                 str(tmp_path / "e"), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert "2-fold cross-validation" in printed
    assert "fold 1 (P13, P14; 1 run(s)): Dice endo " in printed
    low, high = summary["fold_mean"]["endo"]["dice_ci95"]
    assert low <= summary["fold_mean"]["endo"]["dice"] <= high
    assert (f"mean of the 2 folds: Dice endo {summary['fold_mean']['endo']['dice']:.3f} (95% interval over patients "
            f"{low:.3f}-{high:.3f})") in printed
    # The two folds trained on P01-P12 too, which no fold validates: a 2-fold CV of 16 patients lacks folds.
    infos = Predictor.from_checkpoints([fold_runs["p15-seed0"], fold_runs["p13"]], device="cpu").data_infos
    unvalidated = sorted(set().union(*(info["train_patients"] for info in infos)) - {"P13", "P14", "P15", "P16"})
    assert unvalidated and summary["cv_note"].startswith(f"{len(unvalidated)} patient(s) the folds trained on are "
                                                         f"validated by no fold ({', '.join(unvalidated[:6])}")
    assert f"note: {summary['cv_note']}" in printed


def test_the_fold_mean_interval_draws_patients_whole():
    def rows(patient, *dice):
        return [{"patient": patient, "dice": value} for value in dice]

    # Every patient alike: no spread, whatever is drawn.
    same = rows("A", 0.8, 0.8) + rows("B", 0.8) + rows("C", 0.8, 0.8, 0.8) + rows("D", 0.8)
    assert fold_mean_interval(same, [["A", "B"], ["C", "D"]]) == pytest.approx([0.8, 0.8])
    # Around the mean of the folds' image-weighted means, wider the more the patients differ.
    folds = [["A", "B", "C"], ["D", "E"]]
    close = rows("A", 0.8, 0.8, 0.8) + rows("B", 0.82) + rows("C", 0.78) + rows("D", 0.9) + rows("E", 0.88)
    apart = rows("A", 0.8, 0.8, 0.8) + rows("B", 0.95) + rows("C", 0.6) + rows("D", 0.9) + rows("E", 0.7)
    for spread in (close, apart):
        low, high = fold_mean_interval(spread, folds)
        fold_means = [np.mean([r["dice"] for r in spread if r["patient"] in fold]) for fold in folds]
        assert (low + high) / 2 == pytest.approx(np.mean(fold_means)) and low < high
    assert np.diff(fold_mean_interval(apart, folds)) > 3 * np.diff(fold_mean_interval(close, folds))
    # Images are drawn with their patient, not one by one: the spread within a patient adds no width
    # where both patients' means are 0.8 (drawing images alone would give an interval around 0.8).
    within = fold_mean_interval(rows("A", 0.9, 0.7) + rows("B", 0.8, 0.8), [["A", "B"]])
    assert within == pytest.approx([0.8, 0.8])
    # NaN Dice rows are skipped; a fold of fewer than two patients with rows gives no interval (a
    # leave-one-patient-out CV has no spread over patients within its folds).
    assert fold_mean_interval(rows("A", float("nan"), 0.5) + rows("B", 0.5), [["A", "B"]]) == pytest.approx([0.5, 0.5])
    assert fold_mean_interval(rows("A", 0.5) + rows("B", 0.6) + rows("C", 0.7), [["A", "B"], ["C"]]) is None
    assert fold_mean_interval(rows("A", 0.5) + rows("B", float("nan")), [["A", "B"]]) is None
    # Dice lies in [0, 1], so does the interval: two folds of a perfect and a poor patient each.
    low, high = fold_mean_interval(rows("A", 1.0) + rows("B", 0.3) + rows("C", 1.0) + rows("D", 0.95),
                                   [["A", "B"], ["C", "D"]])
    assert 0.0 <= low < high == 1.0


def test_the_fold_mean_interval_covers_the_true_mean_of_simulated_cross_validations():
    """4 folds of 4 patients, as the RVSC CV: a plain percentile bootstrap covered the truth in 88% of these."""
    rng = np.random.default_rng(1)
    hits = 0
    for repeat in range(300):
        rows, folds = [], []
        for fold in range(4):
            folds.append([f"P{fold}{k}" for k in range(4)])
            for patient in folds[-1]:
                mean = rng.normal(0.88, 0.03)
                rows += [{"patient": patient, "dice": float(d)} for d in rng.normal(mean, 0.05, 20)]
        low, high = fold_mean_interval(rows, folds, draws=500, seed=repeat)
        hits += low <= 0.88 <= high
    assert 0.92 <= hits / 300 <= 0.98


def test_a_complete_cross_validation_has_no_coverage_note():
    infos = [{"val_patients": ["P1"], "train_patients": ["P2", "P3"]}, {"val_patients": ["P2", "P3"],
                                                                      "train_patients": ["P1"]}]
    assert cv_coverage_note(infos, ["P1", "P2", "P3", "P4"]) is None  # P4: a test patient no fold saw
    assert cv_coverage_note(infos[:1], ["P1", "P2", "P3"]).startswith("2 patient(s) the folds trained on are "
                                                                      "validated by no fold (P2, P3)")


def test_user_errors(run, rvsc, tmp_path):
    with pytest.raises(ConfigError, match="--split"):
        evaluate(run, rvsc, split="train")
    with pytest.raises(DataError, match="no test patient"):
        evaluate(run, rvsc, split="test")
    data = load_dataset(rvsc)
    data.meta["options"]["normalize"] = "zscore"
    with pytest.raises(ConfigError, match="normalize"):
        check_prepared_compatible(Predictor.from_checkpoints([run]), data)
    assert main(["evaluate", str(run), str(tmp_path / "nothing"), "--out", str(tmp_path / "e")]) == 2


def test_output_folder_is_written_whole_or_not_at_all(run, rvsc, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "keep.txt").write_text("mine\n")
    with pytest.raises(DataError, match="not empty"):
        evaluate(run, rvsc, out=out)
    assert (out / "keep.txt").exists()

    def failing_histogram(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(evaluate_module, "draw_dice_histogram", failing_histogram)
    with pytest.raises(RuntimeError):
        evaluate(run, rvsc, out=tmp_path / "fresh")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["eval"]  # no partial folder, no temp folder
    monkeypatch.undo()

    with pytest.raises(DataError, match="no rvseg output"):
        evaluate(run, rvsc, out=out, force=True)  # keep.txt alone is not an earlier output
    (out / "summary.json").write_text("{}\n")  # an earlier evaluation's folder is replaced whole
    summary = evaluate(run, rvsc, out=out, force=True)
    assert sorted(path.name for path in out.iterdir()) == sorted(Path(p).name for p in summary["files"].values())


def test_absent_labels_are_left_out_not_scored_as_empty(rvsc):
    data = load_dataset(rvsc)
    indices = [0, 1, 2]
    predictions = [np.zeros((2, int(data.rows[i]["height"]), int(data.rows[i]["width"])), dtype=bool) for i in indices]
    data.present[1, 1] = False  # sample 1 carries no epi
    rows = case_rows(data, indices, predictions, ["endo", "epi"], [0, 1])
    assert [(row["id"], row["label"]) for row in rows] == [
        (data.rows[0]["id"], "endo"), (data.rows[0]["id"], "epi"), (data.rows[1]["id"], "endo"),
        (data.rows[2]["id"], "endo"), (data.rows[2]["id"], "epi")]
    assert all(row["empty"] == "pred" and row["dice"] == 0.0 for row in rows)


def test_figures(tmp_path):
    image = np.random.default_rng(0).normal(100, 20, size=(40, 36)).astype(np.float32)
    reference = np.zeros((40, 36), dtype=bool)
    reference[10:25, 8:20] = True
    predicted = np.roll(reference, 2, axis=1)
    rgb = overlay_image(image, [reference, predicted], colours=("#ffff00", "#ff0000"))
    assert rgb.shape == (40, 36, 3) and rgb.dtype == np.uint8
    assert (rgb[17, 8] == [255, 255, 0]).all()  # left edge of the reference only
    assert (rgb[17, 21] == [255, 0, 0]).all()  # right edge of the prediction only
    assert (rgb[10, 15] == [255, 0, 0]).all()  # top edge of both: the later mask is painted last
    inside = rgb[15, 14]
    assert inside[0] == inside[1] == inside[2]  # grey inside both regions

    panels = [ExamplePanel(image, {"endo": predicted}, {"endo": reference}, "a"),
              ExamplePanel(image, {"endo": np.zeros_like(reference)}, {}, "b")]
    draw_examples(panels, tmp_path / "examples.png", title="test")
    draw_dice_histogram({"endo": [0.1, 0.8, 0.85, float("nan")], "epi": []}, tmp_path / "hist.png")
    assert imread(tmp_path / "examples.png").ndim == 3 and imread(tmp_path / "hist.png").ndim == 3


@pytest.mark.parametrize("order", [
    ["a", "b", "data", "--out", "e", "--tta"],
    ["a", "b", "--tta", "data", "--out", "e"],
    ["a", "--tta", "b", "data", "--out", "e"],
    ["--tta", "a", "b", "--out", "e", "data"],
])
def test_options_may_come_between_the_checkpoints_and_the_data_set(order, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b", "data", "scan.dcm"):
        Path(name).touch()
    args = parse_arguments(["evaluate", *order])
    assert (args.checkpoints, args.dataset, args.tta, args.out) == (["a", "b"], "data", True, "e")
    predict = parse_arguments(["predict", "a", "--tta", "b", "scan.dcm", "--out", "p"])
    assert (predict.checkpoints, predict.src) == (["a", "b"], "scan.dcm")


@pytest.mark.parametrize("argv", [["evaluate", "a", "data", "--out", "e", "--fast"],
                                  ["evaluate", "a", "data", "--out", "e", "--tta", "yes"]])
def test_an_unknown_option_or_a_stray_word_is_still_refused(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("a").touch()
    Path("data").touch()
    with pytest.raises(SystemExit) as exit_:
        parse_arguments(argv)
    # One line, not argparse's usage block above it.
    assert exit_.value.code == 2 and capsys.readouterr().err.splitlines() == [
        f"rvseg evaluate: error: unrecognized arguments: {argv[-1]} (options: rvseg evaluate --help)"]


def test_a_stray_word_between_the_paths_is_named_not_the_data_set(run, rvsc, tmp_path, capsys):
    """``evaluate RUN DATA extra``: the last path is the data set, so ``extra`` is the one missing (not
    DATA blamed as a run folder); predict likewise takes its source first."""
    stray = str(tmp_path / "extra")
    assert main(["evaluate", str(run), str(rvsc), stray, "--out", str(tmp_path / "e")]) == 2
    assert capsys.readouterr().err == f"rvseg: {stray}: no such file or folder\n"
    assert main(["predict", str(run), str(rvsc), stray, "--out", str(tmp_path / "p")]) == 2
    assert capsys.readouterr().err == f"rvseg: {stray}: no such file or folder\n"


def test_no_postprocess_is_postprocess_none_and_contradicting_it_is_refused(run, rvsc, tmp_path, capsys):
    base = ["evaluate", str(run), str(rvsc), "--device", "cpu", "--json"]
    assert main([*base, "--out", str(tmp_path / "a"), "--no-postprocess", "--postprocess", "none"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["postprocess"] == "none"
    assert main([*base, "--out", str(tmp_path / "b"), "--no-postprocess", "--postprocess", "stack"]) == 2
    assert "--no-postprocess contradicts --postprocess stack" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_sunnybrook_volumes_use_the_distance_between_slice_planes(shared_data, tmp_path):
    # GE's SliceLocation of these short-axis slices steps 6.7 mm; the planes are 10 mm apart.
    prepare(shared_data / "sunnybrook-subset", tmp_path / "prepared")
    data = load_dataset(tmp_path / "prepared")
    rows = []
    for index, sample in enumerate(data.rows):
        area = float(data.masks[index, 0].sum()) * float(sample["spacing_mm"]) * float(sample["spacing_col_mm"])
        rows.append({"label": "endo", "patient": sample["patient"], "id": sample["id"], "unit": "mm",
                     "phase": sample["phase"], "area_ref": area, "area_pred": area})
    volumes = cavity_volumes(data, rows, ["endo"])["patients"]
    assert volumes["SCD0000101"]["slice_spacing_mm"] == pytest.approx(10.0, abs=0.01)
    assert volumes["SCD0000101"]["ed_volume_ml"]["truth"] == pytest.approx(192.8, abs=1.0)
    locations = sorted({float(row["slice_location"]) for row in data.rows if row["patient"] == "SCD0000101"})
    assert float(np.median(np.diff(locations))) < 7.0  # what the volumes used to be measured with


def test_a_patient_with_a_sample_lacking_its_plane_position_is_placed_by_slice_locations_with_a_note(
        shared_data, tmp_path):
    prepare(shared_data / "sunnybrook-subset", tmp_path / "prepared")
    data = load_dataset(tmp_path / "prepared")
    patient = "SCD0000101"
    ids = [sample["id"] for sample in data.rows if sample["patient"] == patient]
    data.rows[[sample["id"] for sample in data.rows].index(ids[0])]["position_mm"] = ""
    rows = []
    for index, sample in enumerate(data.rows):
        area = float(data.masks[index, 0].sum()) * float(sample["spacing_mm"]) * float(sample["spacing_col_mm"])
        rows.append({"label": "endo", "patient": sample["patient"], "id": sample["id"], "unit": "mm",
                     "phase": sample["phase"], "area_ref": area, "area_pred": area})
    volumes = cavity_volumes(data, rows, ["endo"])
    assert volumes["patients"][patient]["slice_spacing_mm"] < 7.0  # the table-axis step of GE's SliceLocation
    assert f"{patient}: 1 of {len(ids)} images have no plane position, so its slices are placed by their slice " \
           "locations" in volumes["notes"]
    assert volumes["patients"]["SCD0000201"]["slice_spacing_mm"] == pytest.approx(10.0, abs=0.5)
    assert not any(note.startswith("SCD0000201") for note in volumes["notes"])


def test_a_mean_never_mixes_mm_and_pixels():
    """Where some samples lack pixel spacing, their distances (px) and areas (px^2) are left out of the
    means instead of averaged with the mm rows; the overlap metrics still use every row."""
    from rvseg.evaluate import label_summaries

    reference = np.zeros((20, 20), bool)
    reference[5:12, 5:12] = True
    predicted = np.roll(reference, 1, axis=0)
    rows = [{"label": "endo", "patient": patient, "phase": "ED", "slice_level": "mid",
             **segmentation_metrics(predicted, reference, spacing)}
            for patient, spacing in (("A", (1.4, 1.4)), ("B", (1.4, 1.4)), ("C", None))]
    summary = label_summaries(rows, ["endo"])
    metrics = summary["labels"]["endo"]["overall"]["metrics"]
    assert metrics["hd"] == {"mean": pytest.approx(1.4), "sd": pytest.approx(0.0), "n": 2}
    assert metrics["area_ref"]["mean"] == pytest.approx(49 * 1.96) and metrics["dice"]["n"] == 3
    assert summary["units"] == "mixed" and "leave them out" in summary["unit_note"]
    assert summary["labels"]["endo"]["by_patient"]["C"]["metrics"]["hd"]["n"] == 0

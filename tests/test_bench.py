"""``rvseg bench``, the DataLoader peer and the GPU check's summary: they run and report what they measured.

Benchmarks are never timed here: the tests check that every figure exists, is positive and
belongs to the settings asked for, never how fast anything is.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rvseg import bench
from rvseg.bench import BenchOptions, build_step, format_table, time_repeats
from rvseg.cli import main
from rvseg.train.runtime import setup_runtime

REPO = Path(__file__).resolve().parents[1]
#: The CI smoke command of the speed issue.
SMOKE = ["bench", "--device", "cpu", "--size", "32", "32", "--width", "4", "--steps", "2", "--repeats", "1"]
TINY = ["--device", "cpu", "--width", "4", "--steps", "2", "--repeats", "1", "--warmup", "1"]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(args: list[str]) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(args)
    return code, stdout.getvalue()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine, two spinning OpenMP threads per process can
    slow these tiny steps a hundredfold. What is measured does not matter here, only that it is."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The CI smoke run (on a phantom), once: exit code, printed JSON and the --out file."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    code, printed = run_cli([*SMOKE, "--json", "--out", str(out)])
    return code, json.loads(printed), json.loads(out.read_text())


def test_smoke_run_reports_every_figure_positive(smoke):
    code, result, written = smoke
    assert code == 0 and result["errors"] == {}
    assert written == result
    figures = {
        ("raw", "images_per_s"), ("raw", "step_ms"), ("loop", "images_per_s"), ("loop-noaug", "images_per_s"),
        ("eval", "slices_per_s"), ("predict", "slice_ms"), ("predict", "series_ms"),
        ("ratios", "loop_over_raw"), ("ratios", "loop-noaug_over_raw"),
    }
    for part, key in figures:
        value = result[part][key]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (part, key, value)
    for part in bench.PARTS:
        assert result[part]["peak_memory_mb"] > 0
    assert result["peak_memory_mb"] == max(result[part]["peak_memory_mb"] for part in bench.PARTS)
    assert result["memory"] == "process max RSS"


def test_smoke_run_records_the_settings_it_measured(smoke):
    _, result, _ = smoke
    settings = result["settings"]
    assert settings["size"] == [32, 32] and settings["width"] == 4 and settings["batch_size"] == 16
    assert settings["steps"] == 2 and settings["repeats"] == 1 and settings["precision"] == "fp32"
    assert settings["channels_last"] is False and settings["loop_channels_last"] is False
    assert settings["dataset"] == "phantom (synthetic)"
    assert result["device"]["type"] == "cpu" and result["torch_version"] == torch.__version__
    assert len(result["raw"]["repeats_images_per_s"]) == 1


def test_smoke_loop_parts_time_the_epochs_after_the_first(smoke):
    _, result, _ = smoke
    for part, augment in (("loop", True), ("loop-noaug", False)):
        loop = result[part]
        assert loop["augment"] is augment and loop["epochs"] == 2 and len(loop["epoch_seconds"]) == 2
        # The phantom is sized for about `steps` batches of training slices per epoch.
        assert loop["n_train"] >= 2 * 16 and loop["steps_per_epoch"] == math.ceil(loop["n_train"] / 16)
        assert loop["images_per_s"] == pytest.approx(loop["n_train"] / loop["epoch_seconds"][1])
    assert result["ratios"]["loop_over_raw"] == pytest.approx(
        result["loop"]["images_per_s"] / result["raw"]["images_per_s"])
    # eval covers every slice of the data set, predict a native phantom image
    assert result["eval"]["n_slices"] == result["loop"]["n_train"] + result["loop"]["n_val"]
    assert result["predict"]["series_frames"] == 20 and result["predict"]["native_size"] == [256, 216]
    assert result["predict"]["model_size"] == [32, 32] and result["predict"]["via"].startswith("rvseg.inference")


def test_table_names_each_measurement(smoke):
    _, result, _ = smoke
    table = format_table(result)
    for text in ("raw training step", "training loop", "loop, no augment", "evaluation with HD", "prediction",
                 "peak memory", "x raw", "32 x 32"):
        assert text in table


def test_a_given_data_set_sets_the_size(tiny_dataset):
    code, printed = run_cli(["bench", *TINY, "--dataset", str(tiny_dataset), "--parts", "raw,eval", "--json"])
    result = json.loads(printed)
    assert code == 0 and set(bench.PARTS) & set(result) == {"raw", "eval"}
    assert result["settings"]["size"] == [48, 40] and result["settings"]["dataset"] == str(tiny_dataset)
    assert result["eval"]["n_slices"] == 40 and result["ratios"] == {}


def test_a_size_other_than_the_data_sets_is_refused(tiny_dataset, capsys):
    assert main(["bench", *TINY, "--dataset", str(tiny_dataset), "--size", "64", "64"]) == 2
    assert "differs from the data set's 48 x 40" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--cuda-graph"], "--cuda-graph needs a CUDA device"),
    (["--compile", "--cuda-graph"], "choose --cuda-graph or --compile"),
    (["--parts", "raw,speed"], "--parts takes a comma-separated subset"),
    (["--compile-mode", "fast"], "--compile-mode must be one of"),
    (["--loss", "switching"], "needs the training split's tau"),
    (["--steps", "0"], "--steps must be at least 1"),
])
def test_invalid_options_are_one_line_errors(flags, message, capsys):
    assert main(["bench", *TINY, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rvseg: ") and message in err and "Traceback" not in err


def test_a_failing_part_is_recorded_and_the_others_still_run(tiny_dataset, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the device said no")

    monkeypatch.setattr(bench, "measure_eval", broken)
    code, printed = run_cli(["bench", *TINY, "--dataset", str(tiny_dataset), "--parts", "eval,predict", "--json"])
    result = json.loads(printed)
    assert code == 1
    assert result["errors"] == {"eval": "RuntimeError: the device said no"}
    assert "eval" not in result and result["predict"]["slice_ms"] > 0
    assert result["predict"]["native_size"] == result["predict"]["model_size"] == [48, 40]


def test_compile_options_reach_torch_compile(monkeypatch):
    compiled, step_marks = [], []

    def fake_compile(model, **kwargs):
        compiled.append(kwargs)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: step_marks.append(1))
    runtime = setup_runtime("cpu", "fp32")
    images, targets = torch.randn(2, 1, 16, 16), torch.zeros(2, 1, 16, 16)
    for mode, marks in (("reduce-overhead", 2), ("max-autotune", 0)):
        compiled.clear(), step_marks.clear()
        options = BenchOptions(device="cpu", size=(16, 16), width=2, depth=2, compile=True,
                               compile_mode=mode).resolved(runtime)
        step = build_step(options, runtime)
        step(images, targets)
        step(images, targets)
        # reduce-overhead replays CUDA graphs, which must be told where each training step begins
        assert compiled == [{"mode": mode}] and len(step_marks) == marks


def test_device_defaults_fill_only_what_was_not_given():
    runtime = setup_runtime("cpu", "auto")
    resolved = BenchOptions(width=8).resolved(runtime)
    assert resolved.width == 8 and resolved.size == bench.DEVICE_DEFAULTS["cpu"]["size"]
    assert resolved.steps == bench.DEVICE_DEFAULTS["cpu"]["steps"] and resolved.warmup == 1
    assert resolved.precision == "fp32"
    assert resolved.channels_last is False


def test_time_repeats_times_each_repeat_between_syncs():
    events = []
    seconds = time_repeats(lambda: events.append("run"), 3, lambda: events.append("sync"))
    assert len(seconds) == 3 and all(s >= 0 for s in seconds)
    assert events == ["sync", "run", "sync"] * 3


# ---------------------------------------------------------------- the DataLoader peer


def test_peer_reports_its_throughput(tmp_path):
    peer = load_script("dataloader_peer")
    out = tmp_path / "peer.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = peer.main([*TINY, "--size", "32", "32", "--workers", "1", "--samples", "20", "--out", str(out)])
    result = json.loads(out.read_text())
    assert code == 0 and json.loads(stdout.getvalue()) == result
    assert result["peer"]["images_per_s"] > 0 and result["peer"]["workers"] == 1
    assert result["settings"]["size"] == [32, 32] and result["settings"]["dataset"] == "synthetic (20 slices)"


def test_peer_needs_a_full_batch(capsys):
    peer = load_script("dataloader_peer")
    assert peer.main([*TINY, "--size", "32", "32", "--workers", "0", "--samples", "8"]) == 2
    assert "at least one full batch" in capsys.readouterr().err


def test_peer_augmentation_moves_image_and_mask_together():
    peer = load_script("dataloader_peer")
    images, masks = peer.synthetic_slices(6, (64, 64), seed=1)
    slices = peer.AugmentedSlices(images, masks)
    for index in range(len(slices)):
        image, mask = slices[index]
        assert image.shape == (1, 64, 64) and mask.shape == (1, 64, 64) and image.dtype == torch.float32
        assert set(torch.unique(mask).tolist()) <= {0.0, 1.0}
        # a centred disk keeps its area under rotation, and stays where the bright pixels are
        assert float(mask.sum()) == pytest.approx(float(masks[index].sum()), rel=0.15)
        assert float(image[mask > 0].mean()) > float(image[mask == 0].mean()) + 0.3


# ---------------------------------------------------------------- the GPU check


def write_run(folder: Path, dice: list[float], seconds: list[float], summary: dict | None) -> None:
    folder.mkdir(parents=True)
    with open(folder / "metrics.csv", "w", newline="") as handle:
        fields = ["epoch", "train_loss", "val_loss", "val_dice_endo", "lr", "seconds"]
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for epoch, (d, s) in enumerate(zip(dice, seconds, strict=True), start=1):
            writer.writerow({"epoch": epoch, "train_loss": 0.5, "val_loss": 0.5, "val_dice_endo": d, "lr": 5e-4,
                             "seconds": s})
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))


def test_time_to_dice_sums_epoch_seconds_until_the_goal():
    summary = load_script("gpu_summary")
    rows = [{"epoch": str(e), "seconds": s, "val_dice_endo": d}
            for e, (s, d) in enumerate([("0.5", "0.6"), ("0.25", "0.79"), ("0.25", "0.81"), ("0.5", "0.9")], 1)]
    assert summary.time_to_dice(rows) == {"epoch": 3, "seconds": 1.0}
    assert summary.time_to_dice(rows, goal=0.95) is None


def test_gpu_summary_reads_the_trained_weights_of_an_ema_run(tmp_path):
    summary = load_script("gpu_summary")
    (tmp_path / "metrics.csv").write_text("epoch,val_dice_endo,trained_val_dice_endo,seconds\n"
                                          "1,0.70,0.72,1.0\n2,0.80,0.75,1.0\n3,0.81,0.74,1.0\n")
    record = summary.read_run(tmp_path, None)
    assert record["final_val_dice"] == {"endo": 0.81}
    assert record["trained_weights"] == {"endo": {"final": 0.74, "best": 0.75}}
    folds = {f"accuracy-x-fold{k}": {"complete": k < 2, "trained_weights": {"endo": {"final": 0.7 + k / 5,
                                                                                     "best": 0.8 + k / 5}}}
             for k in range(3)}  # fold 2 unfinished: left out
    assert summary.cross_validation(folds) == {"accuracy-x": {"folds": 2, "folds_per_variant": {}, "training": {
        "trained_best_val_dice": {"endo": pytest.approx(0.9)}, "trained_final_val_dice": {"endo": pytest.approx(0.8)}}}}


def test_gpu_summary_computes_the_targets(tmp_path):
    summary = load_script("gpu_summary")
    work = tmp_path / "work"
    (work / "json").mkdir(parents=True)
    (work / "steps.jsonl").write_text(
        '{"name": "train-default", "status": "ok", "rc": 0, "seconds": 18.5, "note": ""}\n'
        '{"name": "train-switching", "status": "timeout", "rc": 124, "seconds": 150, "note": ""}\n')
    (work / "json" / "bench-256-bf16-cl.json").write_text(json.dumps(
        {"raw": {"images_per_s": 1000.0}, "loop": {"images_per_s": 950.0},
         "ratios": {"loop_over_raw": 0.95, "loop-noaug_over_raw": 0.97}}))
    (work / "json" / "peer-256-bf16-cl.json").write_text(json.dumps({"peer": {"images_per_s": 200.0}}))
    (work / "json" / "bench-rvsc.json").write_text(json.dumps({"raw": {"step_ms": 12.0},
                                                                "ratios": {"loop_over_raw": 0.7}}))
    (work / "json" / "bench-rvsc-graph.json").write_text(json.dumps({"raw": {"step_ms": 4.0}}))
    write_run(work / "runs" / "train-default", [0.7, 0.82, 0.85], [4.0, 4.0, 4.0],
              {"seconds": 14.2, "best_val_dice": {"endo": 0.85}, "train_images_per_second": 1300.0})
    write_run(work / "runs" / "train-switching", [0.5], [4.0], None)  # cut off by its time limit
    keep = tmp_path / "keep"
    write_run(keep / "accuracy" / "rvsc-endo", [0.81], [2.0], None)
    for fold, dice in enumerate((0.86, 0.90)):
        run = keep / "accuracy" / f"rvsc-endo-fold{fold}"
        write_run(run, [dice], [2.0], {"seconds": 2.0, "best_val_dice": {"endo": dice - 0.005}})
        (run / "eval-stack").mkdir()
        (run / "eval-stack" / "summary.json").write_text(json.dumps({"labels": {"endo": {"overall": {"metrics": {
            "dice": {"mean": dice}, "hd": {"mean": 6.0 + fold}, "hd95": {"mean": 4.0}}},
            "by_slice_level": {"apex": {"metrics": {"dice": {"mean": dice - 0.2}}}}}}}))
    # Cut off by its time limit after its first SGDR cycle: its snapshot's evaluation still counts.
    cut_off = keep / "accuracy" / "rvsc-endo-fold2"
    write_run(cut_off, [0.5], [2.0], None)
    (cut_off / "eval-snapshot-0001-stack").mkdir()
    (cut_off / "eval-snapshot-0001-stack" / "summary.json").write_text(json.dumps({"labels": {"endo": {
        "overall": {"metrics": {"dice": {"mean": 0.5}, "hd": {"mean": 9.0}, "hd95": {"mean": 7.0}}}}}}))
    (keep / "sweeps" / "losses").mkdir(parents=True)
    (keep / "sweeps" / "losses" / "results.csv").write_text("run,status,loss\na,complete,dice\nb,interrupted,focal\n")
    out = tmp_path / "results.json"
    assert summary.main(["--work", str(work), "--keep", str(keep), "--out", str(out), "--elapsed", "30",
                         "--budget", "480"]) == 0
    results = json.loads(out.read_text())
    targets = results["targets"]
    assert targets["loop_over_raw"] == {"value": 0.95, "goal": 0.9, "met": True}
    assert targets["loop_over_peer"] == {"value": 4.75, "goal": 5.0, "met": False}
    assert targets["baseline_seconds"] == {"train-default": {"value": 14.2, "goal": 20.0, "met": True},
                                           "train-default-graph": None}
    assert targets["baseline_wall_s"] == {"train-default": 18.5, "train-default-graph": None}
    assert targets["time_to_dice_0.80"] == {"train-default": {"epoch": 2, "seconds": 8.0}, "train-switching": None,
                                            "accuracy-rvsc-endo": {"epoch": 1, "seconds": 2.0},
                                            "accuracy-rvsc-endo-fold0": {"epoch": 1, "seconds": 2.0},
                                            "accuracy-rvsc-endo-fold1": {"epoch": 1, "seconds": 2.0},
                                            "accuracy-rvsc-endo-fold2": None}
    assert targets["cross_validation"] == {"accuracy-rvsc-endo": {
        "folds": 2, "folds_per_variant": {"snapshot-0001-stack": 1, "stack": 2},
        "snapshot-0001-stack": {"endo": {"dice": 0.5, "hd": 9.0, "hd95": 7.0}},
        "stack": {"endo": {"dice": pytest.approx(0.88), "hd": 6.5, "hd95": 4.0, "dice_apex": pytest.approx(0.68)}},
        "training": {"best_val_dice": {"endo": pytest.approx(0.875)},
                     "final_val_dice": {"endo": pytest.approx(0.88)}}}}
    assert targets["rvsc_loop_over_raw"] == {"bench-rvsc": {"value": 0.7, "goal": 0.9, "met": False},
                                             "bench-rvsc-graph": None}
    assert targets["small_image_speedup"] == {"bench-rvsc-graph": 3.0}
    assert results["sweeps"]["losses"]["by_status"] == {"complete": 1, "interrupted": 1}
    switching = results["training"]["train-switching"]
    assert switching["complete"] is False and switching["epochs_done"] == 1 and switching["wall_s"] == 150
    assert results["environment"] is None and [s["name"] for s in results["steps"]] == ["train-default",
                                                                                         "train-switching"]


def test_gpu_check_script_parses_and_wants_an_output_folder():
    script = REPO / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "download_wheels.sh")]).returncode == 0
    usage = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert usage.returncode == 2 and "gpu_check.sh" in usage.stderr and "OUTDIR" in usage.stderr
    length = subprocess.run(["bash", str(script), "--accuracy-epochs", "6OO", "out"], capture_output=True, text=True)
    assert length.returncode == 2 and "--accuracy-epochs: a whole number" in length.stderr
    seeds = subprocess.run(["bash", str(script), "--accuracy-seeds", "0", "out"], capture_output=True, text=True)
    assert seeds.returncode == 2 and "--accuracy-seeds: a whole number" in seeds.stderr


def toy_wheel(folder: Path, python_tag: str, text: str) -> None:
    """A minimal wheel of the package ``toywheel`` for one Python version (as binary wheels are)."""
    import zipfile

    info = "toywheel-1.0.dist-info"
    with zipfile.ZipFile(folder / f"toywheel-1.0-{python_tag}-none-any.whl", "w") as wheel:
        wheel.writestr("toywheel.py", f"WHICH = {text!r}\n")
        wheel.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: toywheel\nVersion: 1.0\n")
        wheel.writestr(f"{info}/WHEEL", f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                         f"Tag: {python_tag}-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")


def test_gpu_check_installs_the_wheel_that_fits_the_python(tmp_path):
    """The wheels folder holds binary wheels for the GPU machine's Python and this one's (pyyaml):
    the step must install the one that fits, not fail on the other."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    major, minor = sys.version_info[:2]
    toy_wheel(wheels, f"cp{major}{minor}", "this python")
    toy_wheel(wheels, f"cp{major}{minor + 1}", "another python")
    # Only the set-up steps matter here: --sweeps-only leaves out phase A, and with no prepared data, here or in a
    # keep folder of its own (not the checkout's gpu-work/, which an earlier smoke run may have filled), phase B
    # has nothing to train.
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--smoke", "--wheels", str(wheels),
                           "--sweeps-only", "--skip", "prepare-rvsc", "--keep", str(tmp_path / "keep"),
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stderr[-2000:]
    steps = {s["name"]: s["status"] for s in json.loads((tmp_path / "out" / "results.json").read_text())["steps"]}
    assert (steps["wheels"], steps["imports"]) == ("ok", "ok")


def test_no_module_of_the_gpu_path_imports_dicom_or_optuna_when_imported():
    code = ("import sys, rvseg.bench, rvseg.train.loop, rvseg.metrics, rvseg.data.pngpairs;"
            "print(sorted(m for m in ('pydicom', 'optuna', 'nibabel', 'monai') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_post_processing_rules_pick_the_regions_they_say():
    import numpy as np

    def masks(score):
        return {name: kept[0] for name, kept in rule_masks([score], [None], [None]).items()}

    rule_masks = load_script("compare_postprocessing").rule_masks
    small, large = np.zeros((12, 12), bool), np.zeros((12, 12), bool)
    small[1:5, 1:5] = True  # 16 px
    large[6:11, 6:11] = True  # 25 px ...
    holed = large.copy()
    holed[8, 8] = False  # ... with a hole
    score = np.where(small, 0.9, np.where(holed, 0.6, 0.0))  # mass: small 14.4 = large 24 x 0.6
    kept = masks(score)
    assert np.array_equal(kept["raw"], small | holed)
    assert np.array_equal(kept["largest"], large)  # by pixel count, hole filled
    assert np.array_equal(kept["stack"], large)  # no stack: as largest
    assert np.array_equal(kept["share-0.5"], small | large)  # 16 >= 0.5 x 24
    score = np.where(small, 1.0, np.where(holed, 0.6, 0.0))  # small: mass 16 > 14.4
    assert np.array_equal(masks(score)["mass"], small)
    assert np.array_equal(masks(score)["largest"], large)
    speck = small[:, ::-1] & (np.arange(12) < 2)[:, None]  # 4 px elsewhere: 4 < 0.5 x 24, dropped
    score = np.where(speck, 0.9, score)
    assert np.array_equal(masks(score)["share-0.5"], small | large)


def test_moving_the_decision_threshold_keeps_the_order_of_the_scores():
    import numpy as np

    at_threshold = load_script("compare_postprocessing").at_threshold
    score = np.linspace(0.0, 1.0, 1001, dtype=np.float32)
    for threshold in (0.3, 0.4, 0.6):
        moved = at_threshold(score, threshold)
        assert moved[0] == 0.0 and moved[-1] == 1.0 and float(at_threshold(np.float32(threshold), threshold)) == 0.5
        assert np.all(np.diff(moved) > 0)  # the stack rule's most probable region stays the same
        assert np.array_equal(moved > 0.5, score > threshold)


def test_output_files_that_cannot_be_written_are_refused_before_the_work(tmp_path, capsys):
    (tmp_path / "a-file").write_text("x\n")
    for command, name in ((["bench", "--device", "cpu", "--out"], "out.json"),
                          (["report", str(tmp_path / "nothing"), "--out"], "report.html")):
        assert main([*command, str(tmp_path / "a-file" / name)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "which is a file, not a folder" in err

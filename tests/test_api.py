"""The public Python API: rvseg.api names the library's steps, and the README's example uses them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import rvseg.api as rv

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_public_name_is_the_defining_modules_object():
    from rvseg.evaluate import evaluate
    from rvseg.predict import predict
    from rvseg.train.loop import train

    assert len(set(rv.__all__)) == len(rv.__all__)
    assert all(hasattr(rv, name) for name in rv.__all__)
    assert (rv.train, rv.evaluate, rv.predict) == (train, evaluate, predict)
    assert {"unet", "dice", "switching"} <= {*rv.MODELS, *rv.LOSSES}


def test_importing_the_package_leaves_torch_unloaded():
    """`rvseg --help` and `rvseg phantom` start without PyTorch; the API module loads it."""
    code = "import sys, rvseg; print('torch' in sys.modules); import rvseg.api; print('torch' in sys.modules)"
    lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert lines == ["False", "True"]


def test_readme_python_example_uses_only_public_names():
    block = re.search(r"## Python API.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert "import rvseg.api as rv" in block
    used = set(re.findall(r"\brv\.(\w+)", block))
    assert used and used <= set(rv.__all__), used - set(rv.__all__)


def test_workflow_through_the_api_on_a_phantom(tmp_path):
    """phantom -> prepare -> train -> evaluate -> predict, as a notebook would run it."""
    rv.write_phantom(tmp_path / "study", patients=2, slices=2, frames=4, shape=(64, 56), spacing_mm=2.8, seed=1)
    summary = rv.prepare(tmp_path / "study", tmp_path / "data", rv.PrepareOptions(size=(64, 56)))
    assert (summary["n_samples"], summary["n_patients"]) == (2 * 2 * 2, 2)  # ED and ES on every slice
    dataset = rv.load_dataset(tmp_path / "data")
    assert dataset.images.shape[1:] == (1, 64, 56)
    assert rv.dataset_summary(tmp_path / "data") == rv.dataset_summary(dataset)  # a folder or the set itself
    rv.draw_montage(str(tmp_path / "data"), tmp_path / "montage.png", n=4)
    assert (tmp_path / "montage.png").stat().st_size > 0

    config = rv.TrainConfig(epochs=1, width=4, depth=2, batch_size=4, val_patients=["P02"], device="cpu")
    written = repr(config)
    trained = rv.train(tmp_path / "data", tmp_path / "run", config, verbose=False)
    assert trained["epochs"] == 1 and trained["val_patients"] == ["P02"]
    assert repr(config) == written  # what the run resolves is in its config.yaml, not in the caller's object

    scored = rv.evaluate(tmp_path / "run", tmp_path / "data", split="val", out=tmp_path / "eval")
    assert scored["labels"]["endo"]["overall"]["metrics"]["dice"]["n"] == 4  # P02: 2 slices x ED, ES

    predictor = rv.Predictor.from_checkpoints(str(tmp_path / "run"))  # masks in memory
    assert [mask.shape for mask in predictor.predict(dataset.images[:2, 0])] == [(1, 64, 56)] * 2
    with pytest.raises(rv.ConfigError, match="pass \\[image\\]"):
        predictor.predict(dataset.images[0, 0])

    predicted = rv.predict(tmp_path / "run", tmp_path / "study" / "patient02", tmp_path / "pred")
    assert (tmp_path / "pred" / "predictions.csv").is_file()
    assert (predicted["n_images"], predicted["n_skipped"]) == (2 * 4, 0)  # every frame of the cine


def test_a_wrong_type_from_python_is_one_clear_error_naming_the_argument(tmp_path, tiny_dataset):
    """A dict for a dataclass, a list for a path, a text for a list: an RvsegError, not a deep traceback."""
    cases = [
        (lambda: rv.train(tiny_dataset, tmp_path / "r", {"epochs": 1}), "config must be a TrainConfig"),
        (lambda: rv.prepare(tiny_dataset, tmp_path / "p", {"size": (64, 64)}), "options must be a PrepareOptions"),
        (lambda: rv.prepare([tiny_dataset], tmp_path / "p"), "src must be one path"),
        (lambda: rv.load_dataset([tiny_dataset]), "dataset must be one path"),
        (lambda: rv.PrepareOptions(size=48).validate(), "--size needs two whole numbers"),
        (lambda: rv.PrepareOptions(labels="endo").validate(), "labels must be a list of names"),
        (lambda: rv.write_phantom(tmp_path / "ph", shape=256), "phantom shape must be two integers"),
        (lambda: rv.run_sweep(("losses", tiny_dataset), tmp_path / "s"), "spec must be a SweepSpec"),
        (lambda: rv.resolve_spec(preset="losses"), "preset must be a \\(name, dataset\\) pair"),
        (lambda: rv.resolve_spec(preset=("losses", tiny_dataset), overrides={"epochs": 2}),
         "overrides must be a Overrides"),
        (lambda: rv.evaluate({"run": 1}, tiny_dataset), "checkpoints must be a path or a non-empty list of paths"),
    ]
    for call, message in cases:
        with pytest.raises(rv.RvsegError, match=message):
            call()
    with pytest.raises(rv.ConfigError, match="val_patients must be a list of names, e.g. \\['P13', 'P14'\\]"):
        rv.train(tiny_dataset, tmp_path / "r", rv.TrainConfig(val_patients="P02"))


def test_sweep_overrides_from_python_scale_a_preset_down(tiny_dataset):
    spec = rv.resolve_spec(preset=("losses", tiny_dataset),
                           overrides=rv.Overrides(train={"epochs": 2}, only={"loss": "dice,focal"}))
    assert spec.base["epochs"] == 2
    assert [axis.values for axis in spec.space if axis.name == "loss"] == [["dice", "focal"]]


def test_metrics_take_one_spacing_for_square_pixels_and_default_to_pixels():
    import numpy as np

    pred = np.zeros((20, 20), bool)
    pred[5:10, 5:10] = True
    ref = np.roll(pred, 2, axis=0)
    assert rv.segmentation_metrics(pred, ref, 1.5) == rv.segmentation_metrics(pred, ref, (1.5, 1.5))
    assert rv.segmentation_metrics(pred, ref)["unit"] == "px"


def test_a_prepared_set_prints_as_one_line(tiny_dataset):
    text = repr(rv.load_dataset(tiny_dataset))
    assert text.startswith("PreparedDataset(") and "40 samples of 5 patients" in text and "\n" not in text


def test_train_config_documents_every_option():
    doc = rv.TrainConfig.__doc__
    assert all(f"{name}: " in doc for name in rv.TrainConfig.__dataclass_fields__)
    assert "switch_lambda: " in doc and "(default 0.75)" in doc


def test_collections_of_checkpoints_and_array_sizes_are_accepted(tmp_path):
    from rvseg.checks import as_paths

    runs = [tmp_path / "a", tmp_path / "b"]
    assert as_paths((path for path in runs), "checkpoints") == runs  # a glob's generator
    assert as_paths(tuple(map(str, runs)), "checkpoints") == runs
    with pytest.raises(rv.ConfigError, match="non-empty list of paths"):
        as_paths([], "checkpoints")
    import numpy as np

    options = rv.PrepareOptions(size=np.array([64, 48]))
    options.validate()
    assert options.size == (64, 48) and all(type(v) is int for v in options.size)

"""The public Python API: rvseg.api names the library's steps, and the README's example uses them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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

    config = rv.TrainConfig(epochs=1, width=4, depth=2, batch_size=4, val_patients=["P02"], device="cpu")
    trained = rv.train(tmp_path / "data", tmp_path / "run", config, verbose=False)
    assert trained["epochs"] == 1 and trained["val_patients"] == ["P02"]

    scored = rv.evaluate(tmp_path / "run", tmp_path / "data", split="val", out=tmp_path / "eval")
    assert scored["labels"]["endo"]["overall"]["metrics"]["dice"]["n"] == 4  # P02: 2 slices x ED, ES

    predicted = rv.predict(tmp_path / "run", tmp_path / "study" / "patient02", tmp_path / "pred")
    assert (tmp_path / "pred" / "predictions.csv").is_file()
    assert (predicted["n_images"], predicted["n_skipped"]) == (2 * 4, 0)  # every frame of the cine

"""``rvseg demo`` end to end: the promised Dice on the phantom and RV volumes within 10%."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from rvseg import demo
from rvseg.cli import main


@pytest.mark.slow
def test_full_demo_reaches_its_targets(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    printed = capsys.readouterr().out
    assert "synthetic phantom (not real data)" in printed
    result = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert result["val_endo_dice"] >= 0.85
    errors = result["volume_errors"]
    assert errors["missing"] == []
    for key in ("ed_volume_ml", "es_volume_ml", "ef_percent"):
        assert errors["max_relative_error"][key] < 0.10, (key, errors)
    for name in ("run/progress.png", "evaluation/summary.json", "evaluation/examples_worst.png",
                 "prediction/volumes.csv"):
        assert (tmp_path / "demo" / name).is_file(), name
    assert list((tmp_path / "demo" / "prediction" / "contours").glob("P06-*-icontour-auto.txt"))


def test_quick_demo_runs_every_step(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--quick"]) == 0
    result = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert 0.0 <= result["val_endo_dice"] <= 1.0
    assert (tmp_path / "demo" / "prediction" / "volumes.csv").is_file()


def test_a_demo_of_another_scale_replaces_the_earlier_run(tmp_path, monkeypatch, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--quick"]) == 0
    wider = dataclasses.replace(demo.QUICK, width=8, epochs=1)
    monkeypatch.setattr(demo, "QUICK", wider)
    assert main(["demo", "--out", str(tmp_path / "demo"), "--quick"]) == 0
    config = yaml.safe_load((tmp_path / "demo" / "run" / "config.yaml").read_text())
    assert (config["width"], config["epochs"]) == (8, 1)


def test_a_file_as_the_demo_folder_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "picture.png").write_bytes(b"not a folder")
    assert main(["demo", "--out", str(tmp_path / "picture.png")]) == 2
    err = capsys.readouterr().err
    assert err == f"rvseg: {tmp_path / 'picture.png'}: output exists and is not a folder\n"

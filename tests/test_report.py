"""``rvseg report``: self-contained HTML (+ Markdown) of a grid sweep, a TPE sweep and a run, checked for
content and rendered in headless Chromium (Debian's package, installed by .ci/chromium.sh)."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rvseg.errors import DataError
from rvseg.report.html import write_report
from rvseg.sweep import SweepOptions, run_sweep
from rvseg.sweeps.results import read_results
from rvseg.sweeps.spec import parse_spec

CHROMIUM = Path("/usr/bin/chromium")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY_BASE = {"width": 4, "depth": 2, "batch_size": 8, "device": "cpu", "augment": False}


def sweep(dataset: Path, out: Path, **spec) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")  # tiny trainers on a shared machine
        run_sweep(parse_spec({"dataset": str(dataset), **spec}), out, SweepOptions(verbose=False))
    return out


@pytest.fixture(scope="session")
def grid_sweep(tiny_dataset, tmp_path_factory) -> Path:
    """Two learning rates x two seeds, two epochs each."""
    return sweep(tiny_dataset, tmp_path_factory.mktemp("report") / "grid", base={**TINY_BASE, "epochs": 2},
                 space={"lr": [0.01, 0.001]}, repeats=2,
                 table={"title": "Learning rates", "rows": ["lr"], "values": ["best_val_dice", "final_val_loss"]})


@pytest.fixture(scope="session")
def tpe_sweep(tiny_dataset, tmp_path_factory) -> Path:
    return sweep(tiny_dataset, tmp_path_factory.mktemp("report") / "tpe", base={**TINY_BASE, "epochs": 1},
                 space={"lr": {"low": 1e-4, "high": 1e-1, "log": True}, "loss": {"choices": ["dice", "focal"]}},
                 sampler="tpe", n_trials=3, objective="final_val_loss")


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def check_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert not re.findall(r'(?:src|href)="(?!data:)', page), "a resource outside the page"
    pngs = embedded_pngs(page)
    assert pngs and all(png.startswith(PNG_SIGNATURE) for png in pngs)


def test_grid_report_tables_match_the_runs(grid_sweep, tmp_path):
    page_path, markdown_path = write_report(grid_sweep, tmp_path / "report.html")
    assert markdown_path == tmp_path / "report.md"
    page, markdown = page_path.read_text(), markdown_path.read_text()
    check_self_contained(page)
    rows = read_results(grid_sweep / "results.csv")
    assert len(rows) == 4
    table = markdown.split("**Learning rates**")[1].split("## ")[0]
    means = {}
    for lr in ("0.01", "0.001"):
        dice = [float(r["best_val_dice"]) for r in rows if r["lr"] == lr]
        loss = [float(r["final_val_loss"]) for r in rows if r["lr"] == lr]
        means[lr] = np.mean(dice)
        line = next(line for line in table.splitlines() if line.startswith(f"| {lr} |"))
        assert f"{np.mean(dice):.3f} ± {np.std(dice, ddof=1):.3f}" in line
        assert f"{np.mean(loss):.4f} ± {np.std(loss, ddof=1):.4f}" in line
    best = max(means, key=means.get)
    best_line = next(line for line in table.splitlines() if line.startswith(f"| {best} |"))
    assert "★" in best_line and page.count('class="best"') == 1
    assert "mean ± sd over 2 seeds" in markdown
    assert "Full scale: the SPEC as written." in markdown
    assert "**trained on**: cpu (4 runs)" in markdown
    assert page.count("<img") == 1  # the loss curves of the two points
    assert markdown.count("*Figure (in the HTML version): ") == 1  # the Markdown says where the figure is


def test_a_sweep_report_names_the_devices_its_runs_trained_on(grid_sweep, tmp_path):
    """From each run's summary.json, not from the device the last invocation asked for."""
    copy = tmp_path / "sweep"
    shutil.copytree(grid_sweep, copy)
    summary_path = next((copy / "runs").iterdir()) / "summary.json"
    summary_path.write_text(json.dumps({**json.loads(summary_path.read_text()), "device": "cuda:0"}))
    _, markdown_path = write_report(copy, tmp_path / "report.html")
    assert "**trained on**: cpu (3 runs), cuda:0 (1 run)" in markdown_path.read_text()


def test_a_point_with_a_seed_missing_says_so_and_is_not_marked_best(grid_sweep, tmp_path):
    copy = tmp_path / "grid"
    shutil.copytree(grid_sweep, copy)
    rows = read_results(grid_sweep / "results.csv")
    dice = {lr: np.mean([float(r["best_val_dice"]) for r in rows if r["lr"] == lr]) for lr in ("0.01", "0.001")}
    best, other = sorted(dice, key=dice.get, reverse=True)
    interrupted = next(r for r in rows if r["lr"] == best)
    (Path(interrupted["folder"].replace(str(grid_sweep), str(copy))) / "summary.json").unlink()
    _, markdown_path = write_report(copy, tmp_path / "report.html")
    table = markdown_path.read_text().split("**Learning rates**")[1].split("## ")[0]
    partial = next(line for line in table.splitlines() if line.startswith(f"| {best} |"))
    complete = next(line for line in table.splitlines() if line.startswith(f"| {other} |"))
    assert "(1 of 2 seeds)" in partial and "★" not in partial
    assert "★" in complete


def test_tpe_report_shows_importances_and_parallel_coordinates(tpe_sweep, tmp_path):
    page_path, markdown_path = write_report(tpe_sweep, tmp_path / "tpe.html")
    page = page_path.read_text()
    check_self_contained(page)
    assert "Parameter importances" in page and "Parallel coordinates" in page
    assert len(embedded_pngs(page)) == 3
    rows = read_results(tpe_sweep / "results.csv")
    losses = sorted(float(r["final_val_loss"]) for r in rows)
    table = markdown_path.read_text().split("## Results")[1].split("## ")[0]
    body = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(body) == 3
    assert f"**{losses[0]:.4f}** ★" in body[0]  # sorted best first, lower loss is better


def test_run_report_with_examples_from_an_evaluation(grid_sweep, tiny_dataset, tmp_path):
    run = Path(read_results(grid_sweep / "results.csv")[0]["folder"])
    page_path, markdown_path = write_report(run, tmp_path / "run.html", dataset=tiny_dataset)
    page, markdown = page_path.read_text(), markdown_path.read_text()
    check_self_contained(page)
    assert "best examples" in page and "worst examples" in page and "Dice histogram" in page
    assert len(embedded_pngs(page)) == 4  # curves, best, worst, histogram
    epochs = [line for line in markdown.split("**Per-epoch metrics**")[1].splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(epochs) == 2
    assert "**Evaluation on validation patients" in markdown
    assert "post-processed with the 'stack' rule (the training's val Dice scores the raw output)" in markdown


def test_run_report_without_an_evaluation_says_how_to_get_examples(grid_sweep, tmp_path):
    run = Path(read_results(grid_sweep / "results.csv")[0]["folder"])
    _, markdown_path = write_report(run, tmp_path / "run.html")
    assert "pass --dataset PREPARED" in markdown_path.read_text()


def test_damaged_records_are_named_in_one_line_not_a_traceback(grid_sweep, tmp_path, capsys):
    from rvseg.cli import main

    sweep = tmp_path / "sweep"
    shutil.copytree(grid_sweep, sweep)
    run = next((sweep / "runs").iterdir())
    for path, text, problem in ((sweep / "sweep.json", '{"spec": ', "cannot read this JSON file"),
                                (sweep / "sweep.json", '{"study": "s"}', "this sweep record holds no SPEC"),
                                (run / "config.yaml", "epochs: [1\n", "cannot read this run's config"),
                                (run / "summary.json", "[1]", "this JSON file holds no object"),
                                (run / "metrics.csv", "epoch,loss,lr\n1,0.5,0.1\n2,0.4", "holds a row that is not"),
                                (run / "metrics.csv", "epoch,loss\n1,abc\n", "holds a row that is not numbers"),
                                (run / "metrics.csv", "epoch,loss\n,0.5\n", "holds a row without its epoch"),
                                (run / "config.yaml", b"\xff\xfe", "cannot read this run's config")):
        kept = path.read_text()
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        folder = sweep if path.parent == sweep else run
        capsys.readouterr()
        assert main(["report", str(folder), "--out", str(tmp_path / "report.html")]) == 2, path
        assert capsys.readouterr().err.startswith(f"rvseg: {path}: {problem}"), path
        assert not (tmp_path / "report.html").exists()
        path.write_text(kept)


def test_report_of_an_unrelated_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="neither a sweep folder"):
        write_report(tmp_path, tmp_path / "report.html")



@pytest.mark.parametrize("name, problem", [("report.md", "overwritten by its Markdown twin"),
                                           ("report.MD", "overwritten by its Markdown twin"),
                                           ("report", "give it a name ending in .html"),
                                           ("report.txt", "give it a name ending in .html")])
def test_a_report_name_that_is_no_html_page_is_refused_before_writing(grid_sweep, tmp_path, name, problem):
    """The Markdown goes beside the HTML with the suffix .md: --out report.md would write the page and
    then overwrite it with the Markdown; --out report (a folder meant) a page without a suffix."""
    with pytest.raises(DataError, match=problem):
        write_report(grid_sweep, tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_where_the_markdown_goes_is_refused_before_the_html_is_written(grid_sweep, tmp_path):
    (tmp_path / "report.md").mkdir()
    with pytest.raises(DataError, match="output is a folder"):
        write_report(grid_sweep, tmp_path / "report.html")
    assert not (tmp_path / "report.html").exists()

# ---------------------------------------------------------------- a real browser


def chromium(page: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--enable-logging=stderr", "--v=0", *extra, page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.fixture(scope="session")
def browser() -> Path:
    if not CHROMIUM.is_file():
        message = f"{CHROMIUM} is missing (run .ci/chromium.sh)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


def test_console_errors_are_detected(browser, tmp_path):
    probe = tmp_path / "probe.html"
    probe.write_text('<html><body><script>console.error("probe-error")</script></body></html>')
    messages = console_messages(chromium(probe, tmp_path, "--dump-dom").stderr)
    assert any("probe-error" in m for m in messages)


@pytest.mark.parametrize("which", ["grid", "run"])
def test_reports_render_in_headless_chromium(which, browser, grid_sweep, tiny_dataset, tmp_path):
    target = grid_sweep if which == "grid" else Path(read_results(grid_sweep / "results.csv")[0]["folder"])
    command = [sys.executable, "-m", "rvseg", "report", str(target), "--out", str(tmp_path / "report.html")]
    if which == "run":
        command += ["--dataset", str(tiny_dataset)]
    made = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    page = tmp_path / "report.html"

    dom = chromium(page, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert console_messages(dom.stderr) == []
    assert dom.stdout.count("<table") >= 2 and "<figure>" in dom.stdout

    screenshot = tmp_path / "shot.png"
    shot = chromium(page, tmp_path, f"--screenshot={screenshot}", "--window-size=1280,2000")
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(screenshot)[..., :3]
    assert pixels.shape[:2] == (2000, 1280)
    not_white = (pixels < 0.95).any(axis=2)
    # Text, table borders and figures: a blank page would have (almost) no non-white pixel.
    assert not_white.mean() > 0.01
    assert not math.isclose(float(pixels.std()), 0.0)


def test_only_overrides_of_the_scale_make_a_sweep_rescaled():
    from rvseg.report.html import scale_blocks
    from rvseg.sweeps.spec import apply_overrides, make_overrides, parse_spec, preset_spec

    def verdict(**overrides) -> str:
        spec = parse_spec(apply_overrides(preset_spec("losses", "data"), make_overrides(**overrides)))
        return scale_blocks(spec)[0]

    assert verdict(device="cuda", assignments=["cuda_graph=true", "val_patients=[P13,P14]"]).startswith("Full scale")
    assert "another scale" in verdict(device="cuda", epochs=5)
    assert "another scale" in verdict(epochs=500)
    assert "another scale" in verdict(only=["loss=dice"])


def test_outputs_are_as_readable_as_the_umask_allows(grid_sweep, tmp_path):
    """Written through temporary files and folders (0600 / 0700 by default), outputs must still get
    the user's usual permissions: a report or model is shared with colleagues."""
    import stat

    from rvseg.io import atomic_folder

    previous = os.umask(0o022)
    try:
        html, markdown = write_report(grid_sweep, tmp_path / "report.html")
        with atomic_folder(tmp_path / "out") as folder:
            (folder / "x.txt").write_text("x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(html.stat().st_mode) == stat.S_IMODE(markdown.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755

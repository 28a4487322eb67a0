"""What a run shows while it trains: ``metrics.csv``, ``progress.png`` and a terminal progress line."""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

from rvseg.errors import DataError
from rvseg.io import new_figure, save_figure, write_csv


class MetricsLog:
    """``metrics.csv``: one row per epoch, rewritten atomically after each epoch (it is tiny)."""

    def __init__(self, path: Path, resume_until_epoch: int | None = None):
        self.path = path
        self.rows: list[dict] = []
        if resume_until_epoch is not None and path.is_file():
            with open(path, newline="") as handle:
                # Rows past the checkpoint were written by the interrupted run after its last save.
                self.rows = [row for row in csv.DictReader(handle) if int(row["epoch"]) <= resume_until_epoch]

    def append(self, row: dict) -> None:
        self.rows.append(row)
        write_csv(self.path, self.rows)


def numeric_row(row: dict) -> dict:
    """A ``metrics.csv`` row (text) with its values as numbers: ``epoch`` an int, the others floats;
    empty cells are left out."""
    return {key: int(value) if key == "epoch" else float(value) for key, value in row.items() if value != ""}


def read_metrics(folder: Path) -> list[dict]:
    """The ``metrics.csv`` rows of a run folder as numbers (:func:`numeric_row`); [] if there is none yet.

    Raises:
        DataError: a row that is not numbers (a damaged file).
    """
    path = folder / "metrics.csv"
    try:
        with open(path, newline="") as handle:
            rows = [numeric_row(row) for row in csv.DictReader(handle)]
    except FileNotFoundError:
        return []
    except (TypeError, ValueError) as exc:  # a cut or edited row: a missing cell is None, a word no number
        raise DataError(f"holds a row that is not numbers ({exc})", path) from None
    if any("epoch" not in row for row in rows):
        raise DataError("holds a row without its epoch", path)
    return rows


def draw_progress(rows: list[dict], path: Path) -> None:
    """``progress.png``: losses, validation Dice per label, and learning rate per epoch."""
    if not rows:
        return
    epochs = [int(r["epoch"]) for r in rows]
    figure, (ax_loss, ax_dice, ax_lr) = new_figure(1, 3, figsize=(13, 3.6))
    for key, style in (("train_loss", "-"), ("val_loss", "--")):
        ax_loss.plot(epochs, [float(r[key]) for r in rows], style, label=key.replace("_", " "))
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    for key in (k for k in rows[0] if k.startswith("val_dice_")):
        ax_dice.plot(epochs, [float(r[key]) for r in rows], label=key.removeprefix("val_dice_"))
    for key in (k for k in rows[0] if k.startswith("trained_val_dice_")):  # --ema: the weights before averaging
        label = key.removeprefix("trained_val_dice_") + " trained"
        ax_dice.plot(epochs, [float(r[key]) for r in rows], ":", label=label)
    ax_dice.set(xlabel="epoch", ylabel="Dice", title="validation Dice (per image)", ylim=(0, 1))
    ax_dice.legend()
    ax_lr.plot(epochs, [float(r["lr"]) for r in rows])
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="learning rate", yscale="log")
    figure.tight_layout()
    save_figure(figure, path, dpi=100)


class ProgressLine:
    """A self-updating line with ETA on a terminal; one plain line per epoch otherwise."""

    def __init__(self, total_epochs: int, start_epoch: int, enabled: bool = True):
        self.total = total_epochs
        self.start_epoch = start_epoch
        self.started = time.perf_counter()
        self.enabled = enabled
        self.tty = sys.stdout.isatty()

    def update(self, epoch: int, text: str) -> None:
        if not self.enabled:
            return
        done = epoch - self.start_epoch
        elapsed = time.perf_counter() - self.started
        eta = elapsed / max(done, 1) * (self.total - epoch)
        line = f"epoch {epoch}/{self.total} {text} | {elapsed:.0f}s, eta {eta:.0f}s"
        if self.tty:
            print("\r" + line.ljust(100), end="\n" if epoch == self.total else "", flush=True)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print(flush=True)

"""Report figures of a sweep, returned as PNG bytes (for embedding): loss curves per point, an
overlay of one curve across points, and, for Bayesian sweeps, parameter importances and a
parallel-coordinates plot (Optuna's, on a study rebuilt from ``trials.json``)."""

from __future__ import annotations

import io
import math
import textwrap
import warnings

import numpy as np

from rvseg.io import new_figure

#: Small plots per row in the per-point curves figure, and the most points drawn there.
CURVE_COLUMNS = 6
MAX_CURVES = 48


def png_bytes(figure, dpi: int = 90) -> bytes:
    """The figure as PNG bytes; a pyplot figure (Optuna draws with pyplot) is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def mean_curve(runs: list[list[dict]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, mean and sd of ``key`` over runs (each a list of metrics.csv rows); runs may differ in length."""
    by_epoch: dict[int, list[float]] = {}
    for rows in runs:
        for row in rows:
            by_epoch.setdefault(int(row["epoch"]), []).append(float(row[key]))
    epochs = np.array(sorted(by_epoch))
    values = [by_epoch[e] for e in epochs]
    return epochs, np.array([np.mean(v) for v in values]), np.array([np.std(v) for v in values])


def curves_figure(points: list[tuple[str, list[list[dict]]]]) -> bytes:
    """Train and validation loss per epoch for each point (mean over its seeds, sd shaded).

    Args:
        points: ``(label, runs)`` per point; ``runs`` holds each seed's ``metrics.csv`` rows.
    """
    points = points[:MAX_CURVES]
    columns = min(CURVE_COLUMNS, len(points))
    rows = math.ceil(len(points) / columns)
    figure, axes = new_figure(rows, columns, figsize=(2.6 * columns, 2.1 * rows), squeeze=False, sharey=True)
    for ax in axes.ravel()[len(points):]:
        ax.axis("off")
    for ax, (label, runs) in zip(axes.ravel(), points, strict=False):
        for key, style, colour in (("train_loss", "-", "tab:blue"), ("val_loss", "--", "tab:orange")):
            epochs, mean, sd = mean_curve(runs, key)
            if len(epochs):
                # Markers keep runs of one or two epochs visible.
                ax.plot(epochs, mean, style, color=colour, label=key.replace("_", " "),
                        marker="o" if len(epochs) < 4 else None, markersize=3)
                ax.fill_between(epochs, mean - sd, mean + sd, color=colour, alpha=0.2, linewidth=0)
        ax.set_title(textwrap.fill(label, 34), fontsize=7)
        ax.tick_params(labelsize=6)
    axes.ravel()[0].legend(fontsize=6)
    figure.supxlabel("epoch", fontsize=8)
    figure.supylabel("loss", fontsize=8)
    figure.tight_layout()
    return png_bytes(figure)


def overlay_figure(points: list[tuple[str, list[list[dict]]]], key: str) -> bytes:
    """One curve per point of ``key`` (e.g. ``val_loss``) against the epoch, sd over seeds shaded."""
    figure, ax = new_figure(figsize=(7.5, 4.2))
    for label, runs in points:
        epochs, mean, sd = mean_curve(runs, key)
        if len(epochs):
            line, = ax.plot(epochs, mean, label=label)
            ax.fill_between(epochs, mean - sd, mean + sd, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set(xlabel="epoch", ylabel=key.replace("_", " "), title=f"{key.replace('_', ' ')} per point")
    ax.legend(fontsize=7, loc="best")
    figure.tight_layout()
    return png_bytes(figure)


def study_from_trials(export: dict):
    """An in-memory Optuna study holding the completed trials of a ``trials.json`` export."""
    import optuna

    from rvseg.sweeps.storage import quiet_optuna

    with quiet_optuna(optuna.logging.WARNING):
        study = optuna.create_study(direction=export["direction"])
        for trial in export["trials"]:
            if trial["state"] != "COMPLETE" or trial["value"] is None:
                continue
            distributions = {name: optuna.distributions.json_to_distribution(text)
                             for name, text in trial["distributions"].items()}
            study.add_trial(optuna.trial.create_trial(params=trial["params"], distributions=distributions,
                                                      value=trial["value"]))
    return study


def importance_figure(study) -> bytes:
    """A bar chart of Optuna's parameter importances (PED-ANOVA) for the objective."""
    import optuna

    importances = optuna.importance.get_param_importances(study)
    figure, ax = new_figure(figsize=(6.5, 0.45 * len(importances) + 1.2))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set(xlabel="importance (share)", title="parameter importances")
    figure.tight_layout()
    return png_bytes(figure)


def parallel_figure(study) -> bytes:
    """Optuna's parallel-coordinates plot of the completed trials (matplotlib backend)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the matplotlib backend is marked experimental
        ax = optuna.visualization.matplotlib.plot_parallel_coordinate(study)
    figure = ax.figure
    figure.set_size_inches(9, 4.5)
    return png_bytes(figure)

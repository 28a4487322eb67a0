"""Every fold of a patient-wise cross-validation in one call, in nnU-Net's layout.

``rvseg train DATA --out CV --folds N`` (no ``--fold``) trains folds 0 .. N-1 one after the other into
``CV/fold_0`` ... ``CV/fold_{N-1}``, each an ordinary run folder (its ``config.yaml`` names its fold), and
writes ``CV/folds.json``: per fold its validation patients, best epoch and best and final val Dice, and
their means over the folds. ``rvseg evaluate CV DATA --cv`` then scores the cross-validation and
``rvseg predict CV SCANS`` segments with the ensemble of the fold models, as nnU-Net does; both find
the folds in the folder.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
from pathlib import Path

from rvseg.checks import as_path, check_type, is_whole_number
from rvseg.errors import ConfigError, DataError
from rvseg.io import read_json, write_json
from rvseg.train.config import TrainConfig, read_config_file
from rvseg.train.runtime import launched_world_size

#: The summary of a cross-validation folder (not ``summary.json``, which marks a single run).
FOLDS_FILE = "folds.json"
FOLD_NAME = re.compile(r"fold_(0|[1-9][0-9]*)")


def fold_folder(out: Path, fold: int) -> Path:
    return out / f"fold_{fold}"


def train_folds(dataset: str | Path, out: str | Path, config: TrainConfig, *, resume: bool = False,
                verbose: bool = True) -> dict:
    """Train every fold of ``config.folds`` (``config.fold`` unset) into ``out/fold_K``.

    Returns:
        the cross-validation's summary (also ``out/folds.json``): ``folds`` (per fold ``fold``, ``run``,
        ``val_patients``, ``best_epoch``, ``best_val_dice`` and ``final_val_dice`` per label), and
        ``mean_best_val_dice`` and ``mean_final_val_dice`` per label over the folds. A fold paused by
        ``config.pause_after`` stops the folds there: ``{"paused_at_fold": K, "paused_at_epoch": N}``
        (no ``folds.json`` yet; ``resume`` continues).

    Raises:
        ConfigError: an invalid option, no ``config.folds``, a ``config.fold`` given, a launch by torchrun
            (every rank would have to step through the folds in lockstep: train one fold per launch),
            ``out`` holding a single run, or (without ``resume``) a fold folder that already holds a run:
            checked before any fold trains.
        and what :func:`rvseg.train.loop.train` raises for a fold.
    """
    from rvseg.train.loop import RUN_FILES, check_options, train

    check_type(config, TrainConfig, "config", " (e.g. TrainConfig(folds=4))")
    out = as_path(out, "out")
    check_options(config)
    if not config.folds or config.fold is not None:
        raise ConfigError("training every fold needs --folds N without --fold")
    if launched_world_size() > 1:
        raise ConfigError("under torchrun, train one fold per launch (--folds N --fold K --out CV/fold_K); "
                          "--folds without --fold trains every fold only in a single process")
    if any((out / name).exists() for name in RUN_FILES):
        raise ConfigError("folder holds a single run, not the folds of a cross-validation; choose another --out",
                          out)
    if resume:
        check_same_folds(out, config)
    else:
        taken = [fold_folder(out, k) for k in range(config.folds)
                 if any((fold_folder(out, k) / name).exists() for name in RUN_FILES)]
        if taken:
            raise ConfigError("fold folder already holds a run; use --resume to continue the folds, or choose "
                              "another --out", taken[0])
    folds = []
    for fold in range(config.folds):
        run = fold_folder(out, fold)
        # A fold trained to its end is taken as it is: its last.pt may be gone, or it may have been trained
        # under torchrun, and neither can be resumed.
        summary = finished_summary(run) if resume else None
        if summary is None or summary["epochs"] < config.epochs:
            (out / FOLDS_FILE).unlink(missing_ok=True)  # it summarises the folds as they were
            if verbose:
                print(f"== fold {fold} of {config.folds}: {run}")
            summary = train(dataset, run, dataclasses.replace(config, fold=fold), resume=resume, verbose=verbose)
        if "paused_at_epoch" in summary:
            return {"paused_at_fold": fold, **summary}
        final = summary["final"]
        folds.append({"fold": fold, "run": run.name, "val_patients": summary["val_patients"],
                      "best_epoch": summary["best_epoch"], "best_val_dice": summary["best_val_dice"],
                      "final_val_dice": {label: final.get(f"val_dice_{label}") for label in config.target}})
    result = {"folds": folds, **{f"mean_{key}": mean_per_label(folds, key, config.target)
                                 for key in ("best_val_dice", "final_val_dice")}}
    write_json(out / FOLDS_FILE, result)
    if verbose:
        means = ", ".join(f"{label} {dice:.4f}" for label, dice in result["mean_best_val_dice"].items())
        print(f"{config.folds} folds trained; mean best val Dice {means}; score them with "
              f"rvseg evaluate {out} DATA --cv")
    return result


def check_same_folds(out: Path, config: TrainConfig) -> None:
    """Refuse to resume a cross-validation whose trained folds saved other options than ``config``
    (those a resumed run may change aside), before any fold trains: the folds must be one experiment."""
    from rvseg.train.loop import changed_options

    for run in fold_runs(out):
        if (run / "config.yaml").is_file():
            changed = changed_options(read_config_file(run / "config.yaml"), config, ignore=("fold",))
            if changed:
                raise ConfigError(f"cannot resume the cross-validation: {run.name} was trained with other options: "
                                  f"{'; '.join(changed)}", run / "config.yaml")


def finished_summary(run: Path) -> dict | None:
    """The ``summary.json`` of a run trained to the end its ``config.yaml`` sets, else None (none yet, or
    one left from before a resume lengthened the run)."""
    summary = read_json(run / "summary.json")
    if summary is None or not (run / "config.yaml").is_file():
        return None
    return summary if summary.get("epochs") == read_config_file(run / "config.yaml").get("epochs") else None


def mean_per_label(folds: list[dict], key: str, labels: list[str]) -> dict[str, float | None]:
    """The mean over the folds of ``fold[key][label]`` (None where a fold has no value)."""
    means = {}
    for label in labels:
        values = [fold[key].get(label) for fold in folds]
        means[label] = statistics.mean(values) if values and None not in values else None
    return means


def fold_runs(folder: Path) -> list[Path]:
    """The fold run folders of a cross-validation folder (``fold_0``, ``fold_1``, ... in fold order), or
    [] when ``folder`` is none."""
    runs = [path for path in folder.glob("fold_*") if path.is_dir() and FOLD_NAME.fullmatch(path.name)]
    return sorted(runs, key=lambda path: int(path.name[len("fold_"):]))


def finished_fold_runs(folder: Path) -> list[Path]:
    """:func:`fold_runs`, checked to be every fold of one cross-validation, each trained to its end: a
    folder whose folds are still training (or were paused) would otherwise stand for a weaker ensemble
    without a word.

    Raises:
        DataError: no fold runs, folds whose ``config.yaml`` disagree on (or give no valid) number of
            folds, a fold missing or beyond that number, or a fold not trained to its end.
        ConfigError: a fold's ``config.yaml`` that cannot be read.
    """
    runs = fold_runs(folder)
    if not runs:
        raise DataError("run folder holds no best.pt or last.pt, nor fold_K run folders of a cross-validation",
                        folder)
    counts = {run.name: read_config_file(run / "config.yaml").get("folds") for run in runs
              if (run / "config.yaml").is_file()}
    for name, count in counts.items():
        if not is_whole_number(count) or count < 2:
            raise DataError(f"{name}/config.yaml gives no number of folds (folds: {count!r}), so it is no fold of a "
                            f"cross-validation", folder)
    if len(set(counts.values())) > 1:
        raise DataError(f"the fold runs were trained as different cross-validations (folds: "
                        f"{', '.join(f'{name} {count}' for name, count in counts.items())})", folder)
    count = next(iter(counts.values()), len(runs))
    names = [run.name for run in runs]
    beyond = [name for name in names if int(name[len("fold_"):]) >= count]
    missing = [fold_folder(folder, k).name for k in range(count) if fold_folder(folder, k).name not in names]
    unfinished = [run.name for run in runs if finished_summary(run) is None]
    if beyond:
        raise DataError(f"{', '.join(beyond)} lies beyond the cross-validation's {count} folds", folder)
    if missing or unfinished:
        problem = (f"{', '.join(missing)} missing" if missing else
                   f"{', '.join(unfinished)} not trained to {'its' if len(unfinished) == 1 else 'their'} last epoch")
        raise DataError(f"cross-validation is not finished ({problem}); continue it with rvseg train DATA --out "
                        f"{folder} --resume, or name the fold run folders to use", folder)
    return runs

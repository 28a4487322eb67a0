"""Checkpoints: written atomically, loaded with ``weights_only=True``.

``weights_only`` loading accepts only tensors and plain containers, so a checkpoint file cannot
run code; that is why a run keeps all its randomness in ``torch.Generator`` states (tensors) and
its configuration as a plain dict.

``last.pt`` holds everything needed to continue exactly: model, optimizer, scheduler, grad scaler,
the epoch-order generator, every rank's augmentation generator (``augment_generators``) and torch
global generators (``torch_rng``, which dropout draws from), the position inside the current epoch,
the running loss sum and the record of the best epoch; also the run's config and data facts, which a
resumed run must match. ``best.pt`` holds the model weights of the best validation epoch; it is
written before ``last.pt``, so it is never older than the best epoch ``last.pt`` records.

``model`` is always the weights the run validated: with ``--ema`` the moving average
(:mod:`rvseg.train.average`), and ``last.pt`` then also holds the trained weights
(``training_model``) and the average's update count (``ema_updates``) to continue from.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from rvseg.errors import DataError
from rvseg.io import atomic_path
from rvseg.models import model_from_config


def save_checkpoint(path: str | Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError("no such checkpoint", path)
    try:
        with open(path, "rb") as handle:
            start = handle.read(4)
    except OSError as exc:
        raise DataError(f"cannot read the checkpoint ({exc.strerror or exc})", path) from None
    # torch.save writes a zip archive (a pickle before PyTorch 1.6); a damaged one still starts as one.
    if not start.startswith((b"PK\x03\x04", b"\x80")):
        raise DataError("not a PyTorch checkpoint file (give a run folder, or its best.pt or last.pt)", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):  # a damaged pickle, not a refused one
            raise DataError(f"not a loadable rvseg checkpoint ({describe(exc)})", path) from None
        raise DataError("not an rvseg checkpoint: it holds objects other than tensors and plain values, which "
                        "rvseg never loads (they could run code)", path) from None
    except Exception as exc:  # torch raises several types for damaged files
        raise DataError(f"not a loadable rvseg checkpoint ({describe(exc)})", path) from None


#: A run folder's checkpoints, in the order one is chosen to stand for the run.
RUN_CHECKPOINTS = ("best.pt", "last.pt")


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or ``best.pt`` (else ``last.pt``) inside a run folder."""
    path = Path(path)
    if path.is_dir():
        for name in RUN_CHECKPOINTS:
            if (path / name).is_file():
                return path / name
        raise DataError("run folder holds no best.pt or last.pt", path)
    return path


def find_checkpoints(path: str | Path) -> list[Path]:
    """:func:`find_checkpoint` of a file or run folder, or of each fold of a finished cross-validation
    folder (``fold_0``, ``fold_1``, ...: :func:`rvseg.train.folds.finished_fold_runs`)."""
    from rvseg.train.folds import finished_fold_runs

    path = Path(path)
    if path.is_dir() and not any((path / name).is_file() for name in RUN_CHECKPOINTS):
        return [find_checkpoint(run) for run in finished_fold_runs(path)]
    return [find_checkpoint(path)]


def model_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict, dict]:
    """Rebuild the model stored in a checkpoint (or run folder).

    Returns:
        ``(model in eval mode on the CPU, the run's config dict, the checkpoint's data info)``.
    """
    path = find_checkpoint(path)
    state = load_checkpoint(path)
    if "model" not in state or "config" not in state:
        raise DataError("checkpoint lacks the model or its config", path)
    config, data = state["config"], state.get("data", {})
    try:
        model = model_from_config(config, data.get("in_channels", 1))
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, RuntimeError) as exc:  # a config that lacks a field, or weights of another shape
        raise DataError(f"the checkpoint's weights do not fit the model its config describes ({describe(exc)})",
                        path) from None
    return model.eval(), config, data


def describe(exc: Exception) -> str:
    """``Type: message`` of an exception on one line, cut to 200 characters (torch's are long)."""
    return f"{exc.__class__.__name__}: {' '.join(str(exc).split())[:200]}"

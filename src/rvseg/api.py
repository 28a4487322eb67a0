"""The whole workflow from Python or a notebook, one name per step.

    import rvseg.api as rv

    rv.prepare("../shared/data/rvsc-train-png", "data/rvsc")
    rv.train("data/rvsc", "runs/a", rv.TrainConfig(loss="dice-bce", epochs=50,
                                                   val_patients=["P13", "P14", "P15", "P16"]))
    summary = rv.evaluate("runs/a", "data/rvsc", split="val", out="eval/a")
    rv.train_folds("data/rvsc", "runs/cv", rv.TrainConfig(folds=4))      # runs/cv/fold_0 ... fold_3
    cv = rv.evaluate("runs/cv", "data/rvsc", cv=True)
    rv.predict("runs/a", "../shared/data/rvsc-native/patient09", "pred/")

These are the functions the command line runs (``rvseg prepare`` calls :func:`prepare`, and so
on), with the same checks and outputs. They live here rather than on the ``rvseg`` package because
``rvseg.train``, ``rvseg.evaluate`` and ``rvseg.predict`` are the modules that define them.
Every refusal of bad input raises an :class:`RvsegError` (:class:`DataError` for a bad file,
:class:`ConfigError` for a bad option) whose message names the file or option; the option is named
as the command line spells it (``--split``), which is the keyword argument with ``-`` for ``_``.
:func:`segmentation_metrics`, a function of arrays, raises ``ValueError`` for an invalid mask.

Masks come back from :func:`predict` as files (PNG, contour files and, for NIfTI sources, NIfTI);
for arrays in memory, load a :class:`Predictor` (``Predictor.from_checkpoints("runs/a")``) and call
its ``predict`` on a list of (H, W) images.
"""

from rvseg.data.dataset import PreparedDataset, load_dataset
from rvseg.data.inspect import dataset_summary, draw_montage, load_study
from rvseg.data.phantom import write_phantom
from rvseg.data.prepare import PrepareOptions, prepare
from rvseg.errors import ConfigError, DataError, RvsegError
from rvseg.evaluate import evaluate
from rvseg.inference import Predictor
from rvseg.losses import LOSSES, build_loss
from rvseg.metrics import segmentation_metrics
from rvseg.models import MODELS, build_model
from rvseg.predict import predict
from rvseg.report.html import write_report
from rvseg.sweep import SweepOptions, resolve_spec, run_sweep
from rvseg.sweeps.spec import Overrides
from rvseg.train.config import TrainConfig, load_config
from rvseg.train.folds import train_folds
from rvseg.train.loop import train
from rvseg.train.optim import OPTIMIZERS, SCHEDULERS

__all__ = [
    # data: a synthetic study, any layout read into a prepared set or checked in memory, a prepared set loaded
    "write_phantom", "prepare", "PrepareOptions", "load_study", "load_dataset", "PreparedDataset",
    "dataset_summary", "draw_montage",
    # the registries (name -> builder) of models, losses, optimizers and learning-rate schedules
    "MODELS", "build_model", "LOSSES", "build_loss", "OPTIMIZERS", "SCHEDULERS",
    # training, evaluation, prediction
    "TrainConfig", "load_config", "train", "train_folds", "segmentation_metrics", "evaluate", "Predictor", "predict",
    # studies: a sweep from a SPEC file or preset, and its report
    "resolve_spec", "Overrides", "SweepOptions", "run_sweep", "write_report",
    "RvsegError", "DataError", "ConfigError",
]

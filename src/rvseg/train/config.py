"""The training configuration: one typed dataclass, every field a ``rvseg train`` flag.

Defaults are the reference study's baseline (Adam, lr 5e-4, 100 epochs, batch 16, Dice loss,
target ``endo``). A YAML file (``--config run.yaml``) may set any field; flags given on the
command line override it. The resolved configuration (with ``switch_tau`` resolved, the data
hash and the package version) is saved as ``config.yaml`` in every run folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from rvseg.checks import is_real_number, is_whole_number, pick
from rvseg.errors import ConfigError

#: Default share of the image below which a slice's target counts as small (``--oversample-small``).
SMALL_FOREGROUND = 0.01


@dataclass
class TrainConfig:
    """Every option of one training run; saved as ``RUN/config.yaml``, read back by ``--config``.

    Each field is the ``rvseg train`` flag of the same name (``switch_tau`` is ``--switch-tau``). The
    defaults are the reference study's baseline. The fields are listed below with their meaning
    (the command's ``--help`` texts) and defaults.
    """

    # data and split
    target: list[str] = field(default_factory=lambda: ["endo"])
    val_patients: list[str] = field(default_factory=list)
    fold: int | None = None
    folds: int | None = None
    split_seed: int = 0
    val_fraction: float = 0.2
    fraction: float = 1.0
    # model
    arch: str = "unet"
    width: int = 64
    depth: int = 4
    dropout: float = 0.0
    deep_supervision: int = 0
    # loss
    loss: str = "dice"
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    switch_lambda: float = 0.75
    switch_tau: str = "auto"
    switch_per: str = "image"
    # optimisation
    optimizer: str = "adam"
    lr: float = 5e-4
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    scheduler: str = "none"
    step_size: int = 30
    gamma: float = 0.1
    sgdr_t0: int = 50
    min_lr: float = 1e-6
    snapshots: bool = False
    ema: float = 0.0
    epochs: int = 100
    batch_size: int = 16
    seed: int = 0
    # augmentation (on the training device)
    augment: bool = True
    rotate_deg: float = 180.0
    scale_min: float = 0.85
    scale_max: float = 1.15
    translate: float = 0.05
    intensity: float = 0.1
    elastic: float = 0.0
    oversample_small: float = 1.0
    small_foreground: float = SMALL_FOREGROUND
    # runtime
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    cuda_graph: bool = False
    pause_after: int | None = None
    # resolved when the run starts (recorded, not set by users)
    resolved_tau: float | list[float] | None = None  # one per target when there are several
    data_hash: str = ""
    rvseg_version: str = ""
    # the validation patients the split gave (a fold overrides val_patients; a share draws them)
    resolved_val_patients: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Raise :class:`ConfigError` for an option out of range or an unknown loss, optimizer, schedule
        or model name (the split, the loss's parameters and the model's size are checked where they are
        used: :func:`rvseg.train.loop.check_options`)."""
        check_types(self)
        self.check_names()
        for name in ("epochs", "batch_size", "step_size", "sgdr_t0", "depth", "width"):
            check_option(name, getattr(self, name), "at least 1", lambda v: v >= 1)
        for name in ("lr", "gamma", "oversample_small"):
            check_option(name, getattr(self, name), "a finite number greater than 0", lambda v: 0 < v < math.inf)
        for name in ("weight_decay", "min_lr"):
            check_option(name, getattr(self, name), "a finite number of at least 0", lambda v: 0 <= v < math.inf)
        check_option("momentum", self.momentum, "in [0, 1)", lambda v: 0 <= v < 1)
        duplicates = sorted({label for label in self.target if self.target.count(label) > 1})
        if duplicates:
            raise ConfigError(f"--target names {', '.join(duplicates)} more than once")
        check_option("small_foreground", self.small_foreground, "in (0, 1)", lambda v: 0 < v < 1)
        check_option("deep_supervision", self.deep_supervision, f"in [0, {self.depth}) (below --depth)",
                     lambda v: 0 <= v < self.depth)
        check_option("ema", self.ema, "in [0, 1) (0 = off)", lambda v: 0 <= v < 1)
        if self.snapshots and self.scheduler != "sgdr":
            raise ConfigError(f"--snapshots needs --scheduler sgdr (not {self.scheduler}): a snapshot is saved where "
                              f"each SGDR cycle ends")
        if self.augment:  # unused ranges of a run without augmentation (an older config.yaml) stay as they are
            self.check_augmentation()
        check_graph_or_compile(self.cuda_graph, self.compile)
        if self.pause_after is not None:
            check_option("pause_after", self.pause_after, "at least 1", lambda v: v >= 1)
        if self.folds is not None:
            check_option("folds", self.folds, "at least 2", lambda v: v >= 2)
        if self.fold is not None:
            check_option("fold", self.fold, "at least 0", lambda v: v >= 0)

    def check_names(self) -> None:
        """The loss, optimizer, schedule and model exist (their registries import torch: imported here)."""
        from rvseg.losses import LOSSES
        from rvseg.models import MODELS
        from rvseg.train.optim import OPTIMIZERS, SCHEDULERS

        for registry, name, what in ((LOSSES, self.loss, "loss"), (OPTIMIZERS, self.optimizer, "optimizer"),
                                     (SCHEDULERS, self.scheduler, "scheduler"), (MODELS, self.arch, "model")):
            pick(registry, name, what)

    def check_augmentation(self) -> None:
        """The ranges :class:`rvseg.train.augment.AugmentConfig` needs, named as the options are."""
        for name, (wanted, ok) in AUGMENT_RANGES.items():
            check_option(name, getattr(self, name), wanted, ok)
        check_option("scale_min", self.scale_min, "greater than 0", lambda v: v > 0)
        check_option("scale_max", self.scale_max, f"a finite number of at least --scale-min ({self.scale_min})",
                     lambda v: self.scale_min <= v < math.inf)

    def save(self, path: str | Path) -> None:
        from rvseg.io import write_text

        write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


#: What each augmentation strength must be, and its test: one source for these options and for
#: :class:`rvseg.train.augment.AugmentConfig` (which this torch-free module cannot import).
AUGMENT_RANGES = {
    "rotate_deg": ("a finite number of at least 0", lambda v: 0 <= v < math.inf),
    "translate": ("in [0, 1)", lambda v: 0 <= v < 1),
    "intensity": ("in [0, 1)", lambda v: 0 <= v < 1),
    "elastic": ("a finite number of at least 0", lambda v: 0 <= v < math.inf),
}

#: Fields recorded by the run itself, not options.
RESOLVED_FIELDS = ("resolved_tau", "data_hash", "rvseg_version", "resolved_val_patients")

HELP = {
    "target": "label(s) to segment, comma-separated (one output channel each)",
    "val_patients": "validation patients, comma-separated (e.g. P13,P14,P15,P16)",
    "fold": "cross-validation fold index (with --folds)",
    "folds": "number of patient-wise folds; without --fold, every fold is trained, into OUT/fold_0 ... OUT/fold_N-1",
    "split_seed": "seed of the patient split",
    "val_fraction": "share of patients held out when no list or fold is given",
    "fraction": "seeded share of the training slices to train on (the study: 1.0/0.8/0.7/0.4)",
    "arch": "unet | dilated-unet",
    "width": "channels of the first level (doubles per level)",
    "depth": "number of poolings",
    "deep_supervision": "decoder levels (1/2, 1/4, ...) with an auxiliary head whose upsampled output is scored "
                        "too; the losses are weighted 1, 1/2, 1/4, ... and normalised, and train_loss is that "
                        "mix while val_loss scores the main output (0 = off)",
    "dropout": "dropout probability at the bottleneck",
    "loss": "dice | inverse-dice | bce | dice-bce | dice-bce-inverse | focal | switching",
    "focal_alpha": "focal loss weight of the foreground class",
    "focal_gamma": "focal loss focusing exponent (0 = weighted BCE)",
    "switch_lambda": "switching loss: weight of Dice (inverse Dice gets 1 - lambda) on images whose "
                     "foreground share exceeds tau; the weights swap below it",
    "switch_tau": "switching threshold on the target's mean (the foreground share of filled masks), or auto "
                  "(that mean over the training split, one per target)",
    "switch_per": "image | batch: where the switching loss measures the foreground share",
    "optimizer": "adam | adamw | sgd",
    "lr": "learning rate (the first epoch's, before any schedule)",
    "weight_decay": "L2 penalty (decoupled for adamw)",
    "momentum": "SGD momentum",
    "nesterov": "SGD with Nesterov momentum",
    "step_size": "step scheduler: epochs between learning-rate drops",
    "gamma": "step scheduler: factor of each drop",
    "min_lr": "cosine: the learning rate it ends at; sgdr: the low point of each cycle",
    "epochs": "passes over the training split",
    "batch_size": "images per training step",
    "seed": "seed of the initial weights, the --fraction draw, batch order and augmentation",
    "scheduler": "none | cosine | step | sgdr",
    "sgdr_t0": "epochs of the first SGDR cycle; each next one is twice as long, so a run ends at a cycle's low "
               "point when --epochs is t0, 3 t0, 7 t0, ...",
    "snapshots": "sgdr: also save the weights at the end of each cycle (its lowest learning rate) as "
                 "snapshot-EEEE.pt; evaluate or predict several of them as one model (a snapshot ensemble)",
    "ema": "validate and save an exponential moving average of the weights with this decay per step "
           "(e.g. 0.99; 0 = off)",
    "augment": "batched on-device flips, rotation, scaling, intensity jitter",
    "rotate_deg": "rotation drawn from [-this, this] degrees",
    "scale_min": "smallest zoom factor drawn",
    "scale_max": "largest zoom factor drawn",
    "translate": "shift along each axis drawn from [-this, this] times the image size",
    "intensity": "strength of the gamma, contrast and brightness jitter, in [0, 1)",
    "oversample_small": "weight of small-foreground slices in the batch draw (1 = uniform; the paper oversampled)",
    "small_foreground": "a slice whose first target covers less than this share of the image is small (used "
                        "only when --oversample-small is not 1)",
    "elastic": "elastic deformation amplitude in pixels (0 = off)",
    "device": "auto | cpu | cuda | cuda:N",
    "precision": "auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32",
    "compile": "torch.compile the model",
    "cuda_graph": "replay each full training batch as one captured CUDA graph (CUDA, one process; for small, "
                  "launch-bound images)",
    "pause_after": "stop cleanly after this epoch (resume later with --resume)",
}


def field_default(f: dataclasses.Field):
    """A dataclass field's default, made by its factory where it has one."""
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _document_fields() -> None:
    """Append each field's help text and default to the TrainConfig docstring (one source for both)."""
    entries = []
    for f in dataclasses.fields(TrainConfig):
        default = field_default(f)
        # The command line takes lists comma-separated; Python takes lists.
        text = HELP.get(f.name, "recorded by the run (not an option)").replace(", comma-separated", " (a list)")
        entries.append(f"        {f.name}: {text} (default {default!r})")
    TrainConfig.__doc__ = f"{TrainConfig.__doc__.rstrip()}\n\n    Attributes:\n" + "\n".join(entries) + "\n"


_document_fields()


#: Other names of a flag: the study calls the share of training data the "training share".
FLAG_ALIASES = {"fraction": ("--train-share",)}


def check_graph_or_compile(cuda_graph: bool, compile_: bool) -> None:
    if cuda_graph and compile_:
        raise ConfigError("choose --cuda-graph or --compile, not both (compile's reduce-overhead mode is its "
                          "own CUDA-graph path)")


def check_types(config: TrainConfig) -> None:
    """Raise ConfigError for a field whose value is not of its type, as a TrainConfig built in Python
    (not through :func:`load_config`, which converts text) may hold: ``target="endo"`` would otherwise
    read as the labels e, n, d, o. NumPy numbers (a width from ``np.arange``, a share from an array)
    are accepted and stored as Python numbers, which ``config.yaml`` can record."""
    for f in dataclasses.fields(config):
        value, kind = getattr(config, f.name), field_kind(f)
        if value is None:
            continue
        is_bool = isinstance(value, (bool, np.bool_))
        number = is_real_number(value)
        if f.name == "resolved_tau":  # one number, or one per target
            ok = all(map(is_real_number, value)) if isinstance(value, list) else number
            value = [float(item) for item in value] if ok and isinstance(value, list) else float(value) if ok else value
        elif kind is list:
            ok = isinstance(value, list) and all(isinstance(item, str) for item in value)
            value = [str(item) for item in value] if ok else value  # np.str_ (np.unique's) is no YAML text
        elif kind is float:
            ok, value = number, float(value) if number else value
        elif kind is int:
            ok = is_whole_number(value)
            value = int(value) if ok else value
        elif kind is bool:
            ok, value = is_bool, bool(value) if is_bool else value
        elif f.name == "switch_tau":  # a number, or the text "auto"
            ok = number or isinstance(value, str)
            value = float(value) if number else str(value) if ok else value
        else:
            ok = isinstance(value, kind)
            value = str(value) if ok and kind is str else value
        if not ok:
            example = "['endo']" if f.name == "target" else "['P13', 'P14']"
            wanted = {list: f"a list of names, e.g. {example}", float: "a number", int: "a whole number",
                      bool: "True or False"}.get(kind, "text")
            raise ConfigError(f"option {f.name} must be {wanted}, not {value!r}")
        setattr(config, f.name, value)


def check_option(name: str, value, wanted: str, ok) -> None:
    if not ok(value):
        raise ConfigError(f"--{name.replace('_', '-')} must be {wanted}, not {value}")


def field_kind(f: dataclasses.Field) -> type:
    """The scalar type of a field (int, float, str, bool or list) with Optional removed."""
    hint = typing.get_type_hints(TrainConfig)[f.name]
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


def parse_value(name: str, kind: type, value):
    """Convert a YAML or command-line value to the field's type, with a clear message."""
    if value is None:
        return None
    try:
        if name == "resolved_tau" and isinstance(value, list):  # one threshold per target
            return [float(item) for item in value]
        if kind is list:
            items = value.split(",") if isinstance(value, str) else list(value)
            return [str(item).strip() for item in items if str(item).strip()]
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "yes", "no", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "yes", "1")
            return bool(value)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)  # int() would silently drop the fraction of a YAML 2.5
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"option {name}: {value!r} is not a valid {kind.__name__}") from None


def user_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(TrainConfig) if f.name not in RESOLVED_FIELDS]


def read_config_file(path: Path) -> dict:
    """A config file's options as written (``snake_case`` keys), not yet parsed or checked."""
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config ({exc})", path) from None
    if not isinstance(loaded, dict):
        raise ConfigError("a config file must hold a mapping of option: value", path)
    return {str(k).replace("-", "_"): v for k, v in loaded.items()}


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """Build a config from an optional YAML file and explicit overrides (later wins)."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        values.update(read_config_file(path))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(unknown)}", path)
    parsed = {name: parse_value(name, field_kind(known[name]), v) for name, v in values.items()}
    config = TrainConfig(**parsed)
    config.validate()
    return config


def add_train_arguments(parser) -> None:
    """One flag per user field; every default is None so that only given flags override YAML."""
    defaults = TrainConfig()
    for f in user_fields():
        flag = "--" + f.name.replace("_", "-")
        kind = field_kind(f)
        default = getattr(defaults, f.name)
        shown = ",".join(default) if isinstance(default, list) else default
        text = f"{HELP.get(f.name, f.name.replace('_', ' '))} (default: {shown})"
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, *FLAG_ALIASES.get(f.name, ()), dest=f.name, default=None,
                                metavar=kind.__name__.upper(), help=text)


def overrides_from_args(args) -> dict:
    return {f.name: getattr(args, f.name) for f in user_fields() if getattr(args, f.name, None) is not None}

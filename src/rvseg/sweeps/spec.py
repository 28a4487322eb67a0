"""The sweep SPEC (a YAML file or a preset) and what follows from it: grid cells and run names.

A SPEC is a mapping::

    name: my-sweep                 # optional; default: the file name or preset name
    dataset: prepared-or-raw/      # a prepared set, or a raw study folder (prepared under SWEEP/data/)
    test: prepared-test-set/       # optional: held-out patients, scored with ``rvseg evaluate``
    base: {epochs: 100, loss: dice}        # TrainConfig fields shared by every trial
    prepare: {size: [128, 112]}            # PrepareOptions used when the sweep prepares data itself
    space:                                 # the search space, one entry per axis
      lr: [0.01, 0.001]                    # grid axis: the field takes each value
      loss:                                # labelled cases: each label sets several fields
        dice: {loss: dice}
        switching-0.5: {loss: switching, switch_lambda: 0.5}
      dropout: {low: 0.0, high: 0.5}       # TPE only: a float range ({log: true}, {step: ...})
      depth: {low: 3, high: 5}             # integer bounds give an integer range
      arch: {choices: [unet, dilated-unet]}  # TPE only: categorical
    objective: best_val_dice       # best_val_dice | final_val_dice | final_val_loss | best_val_loss | test_dice
    sampler: grid                  # grid | tpe
    n_trials: 20                   # tpe only (a grid runs every cell)
    repeats: 3                     # seeds per cell (base seed + 0, 1, 2), or an explicit list of seeds
    pruner: median                 # optional: none | median | {median: {n_startup_trials: 5, n_warmup_steps: 10}}
                                   #   | {threshold: {lower: 0.1, n_warmup_steps: 10}} (per-epoch val Dice or loss)
    table: {rows: [loss], columns: null, values: [best_val_dice]}   # report layout (optional)

Axes named after a :class:`~rvseg.data.prepare.PrepareOptions` field (``channels``, ``mask_style``,
``normalize``, ``clahe``) vary the prepared data set: each variant is prepared from the raw source
into ``SWEEP/data/<variant>/`` (when ``dataset`` is a prepared set, from the source recorded in its
``dataset.json``). Every other name must be a :class:`~rvseg.train.config.TrainConfig` field.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rvseg.checks import check_choice, is_finite_number, is_real_number, is_whole_number, pick
from rvseg.data.prepare import PrepareOptions
from rvseg.errors import ConfigError
from rvseg.train.config import TrainConfig, load_config, user_fields

#: Axis names that vary the prepared data set rather than the training run.
PREPARE_FIELDS = ("channels", "mask_style", "normalize", "clahe")
#: Base fields that choose where a run executes, not what it computes (may change between reruns).
RUNTIME_FIELDS = ("device", "precision", "compile")
#: Base fields the sweep sets itself.
SWEEP_OWNED_FIELDS = ("seed", "pause_after")

#: objective name -> (direction, the per-epoch metrics.csv quantity reported for pruning).
OBJECTIVES = {
    "best_val_dice": ("maximize", "val_dice"),
    "final_val_dice": ("maximize", "val_dice"),
    "final_val_loss": ("minimize", "val_loss"),
    "best_val_loss": ("minimize", "val_loss"),
    "test_dice": ("maximize", "val_dice"),
}
SAMPLERS = ("grid", "tpe")
#: Pruners of clearly bad trials: Optuna's MedianPruner, or ThresholdPruner (e.g. Dice below 0.1
#: after 10 epochs: ``{threshold: {lower: 0.1, n_warmup_steps: 10}}``).
PRUNERS = ("none", "median", "threshold")
#: Names an axis may not take (columns of results.csv).
RESERVED_NAMES = ("run", "cell", "seed", "status", "error", "folder")
#: Longest run folder name; longer names are cut and end in a hash of the full name.
MAX_RUN_NAME = 150
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


@dataclass
class Axis:
    """One dimension of the search space.

    Attributes:
        name: a TrainConfig or PrepareOptions field, or (for labelled cases) any label.
        kind: ``grid`` (a list of values or of case labels), ``float``, ``int`` or ``categorical``.
        values: grid or categorical values (for cases: the labels, in SPEC order).
        cases: for labelled cases, label -> the fields it sets; None otherwise.
        low, high, log, step: the range of a ``float`` or ``int`` axis.
    """

    name: str
    kind: str
    values: list = field(default_factory=list)
    cases: dict[str, dict] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    def settings(self, value) -> dict:
        """The fields this axis sets when it takes ``value``."""
        if self.cases is not None:
            return dict(self.cases[value])
        return {self.name: value}

    def to_spec(self):
        if self.cases is not None:
            return copy.deepcopy(self.cases)
        if self.kind == "grid":
            return list(self.values)
        if self.kind == "categorical":
            return {"choices": list(self.values)}
        spec = {"low": self.low, "high": self.high}
        if self.log:
            spec["log"] = True
        if self.step is not None:
            spec["step"] = self.step
        return spec


@dataclass
class SweepSpec:
    """A parsed and validated SPEC (module docstring). ``scale`` records the overrides applied
    to a preset: field -> ``{"preset": value, "used": value}``; ``restricted`` the axes cut down
    with ``--only``."""

    name: str
    dataset: str
    base: dict
    space: list[Axis]
    objective: str = "best_val_dice"
    sampler: str = "grid"
    n_trials: int | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    pruner: dict | None = None
    prepare: dict = field(default_factory=dict)
    table: dict | None = None
    test: str | None = None
    preset: str | None = None
    scale: dict = field(default_factory=dict)
    restricted: dict = field(default_factory=dict)

    @property
    def direction(self) -> str:
        return OBJECTIVES[self.objective][0]

    @property
    def axis_names(self) -> list[str]:
        return [axis.name for axis in self.space]

    def to_dict(self) -> dict:
        """The SPEC as YAML-able data (``rvseg sweep --print-spec``; saved in ``sweep.json``)."""
        data = {
            "name": self.name, "preset": self.preset, "dataset": self.dataset, "test": self.test,
            "base": copy.deepcopy(self.base), "prepare": copy.deepcopy(self.prepare),
            "space": {axis.name: axis.to_spec() for axis in self.space},
            "objective": self.objective, "sampler": self.sampler, "n_trials": self.n_trials,
            "repeats": list(self.seeds), "pruner": self.pruner_spec(), "table": copy.deepcopy(self.table),
            "scale": copy.deepcopy(self.scale), "restricted": copy.deepcopy(self.restricted),
        }
        return data

    def pruner_spec(self) -> dict | None:
        if self.pruner is None:
            return None
        options = {k: v for k, v in self.pruner.items() if k != "name"}
        return {self.pruner["name"]: options}

    def identity(self) -> dict:
        """What must not change between reruns into one SWEEP folder (runtime fields left out).

        A prepared data set counts by its content, not its path, so that a sweep folder moved with
        its data (another machine, an unpacked archive) continues where it stopped.
        """
        data = self.to_dict()
        data["dataset"], data["test"] = data_identity(self.dataset), data_identity(self.test)
        data["base"] = {k: v for k, v in data["base"].items() if k not in RUNTIME_FIELDS}
        data["scale"] = {k: v for k, v in data["scale"].items() if k != "device"}
        return data

    def fingerprint(self) -> str:
        """8 hex digits identifying :meth:`identity` (part of the default study name)."""
        text = yaml.safe_dump(self.identity(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    def grid_cells(self) -> list[dict]:
        """Every combination of the grid axes, in SPEC order (first axis slowest)."""
        if self.sampler != "grid":
            raise ConfigError("only a grid sweep has a fixed list of cells")
        names = self.axis_names
        combos = itertools.product(*(axis.values for axis in self.space))
        return [dict(zip(names, combo, strict=True)) for combo in combos]

    def run_order(self) -> list[str]:
        """Run folder names in grid order (points in SPEC order, seeds within a point); [] for TPE."""
        if self.sampler != "grid":
            return []
        return [run_name(cell, seed) for cell in self.grid_cells() for seed in self.seeds]

    def settings(self, params: dict) -> tuple[dict, dict]:
        """``(TrainConfig fields, PrepareOptions fields)`` set by one point of the space."""
        train, prepare = {}, {}
        for axis in self.space:
            for key, value in axis.settings(params[axis.name]).items():
                (prepare if key in PREPARE_FIELDS else train)[key] = value
        return train, prepare

    def train_config(self, params: dict, seed: int) -> TrainConfig:
        train, _ = self.settings(params)
        return load_config(None, {**self.base, **train, "seed": seed})

    def needs_variants(self) -> bool:
        """True when the sweep prepares its own data (prepare axes, or prepare options given)."""
        return bool(self.prepare) or any(
            key in PREPARE_FIELDS for axis in self.space for value in axis.values for key in axis.settings(value)
        )


# ---------------------------------------------------------------- parsing


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a SPEC YAML file (module docstring)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read sweep spec ({exc})", path) from None
    if not isinstance(data, dict):
        raise ConfigError("a sweep spec must be a mapping (base:, space:, objective: ...)", path)
    data.setdefault("name", path.stem)
    dataset = data.get("dataset")
    if isinstance(dataset, str) and not Path(dataset).is_absolute():
        # Relative data paths in a SPEC file are relative to the file, as a user would expect.
        data["dataset"] = str((path.parent / dataset).resolve())
    if isinstance(data.get("test"), str) and not Path(data["test"]).is_absolute():
        data["test"] = str((path.parent / data["test"]).resolve())
    try:
        return parse_spec(data)
    except ConfigError as exc:
        raise ConfigError(exc.message, path) from None


def parse_spec(data: dict) -> SweepSpec:
    """Validate a SPEC mapping and return the :class:`SweepSpec`."""
    known = {"name", "preset", "dataset", "test", "base", "prepare", "space", "objective", "sampler", "n_trials",
             "repeats", "pruner", "table", "scale", "restricted"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown sweep spec key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if not data.get("dataset"):
        raise ConfigError("the sweep spec names no dataset:")
    sampler = str(data.get("sampler", "grid"))
    check_choice(sampler, SAMPLERS, "sampler")
    objective = str(data.get("objective", "best_val_dice"))
    check_choice(objective, OBJECTIVES, "objective")
    if objective == "test_dice" and not data.get("test"):
        raise ConfigError("objective test_dice needs a test: data set")
    base = parse_base(data.get("base") or {})
    space = parse_space(data.get("space") or {}, sampler)
    spec = SweepSpec(
        name=str(data.get("name") or "sweep"), dataset=str(data["dataset"]), base=base, space=space,
        objective=objective, sampler=sampler, n_trials=parse_n_trials(data.get("n_trials"), sampler),
        seeds=parse_repeats(data.get("repeats", 1), base.get("seed", 0)), pruner=parse_pruner(data.get("pruner")),
        prepare=parse_prepare(data.get("prepare") or {}), table=parse_table(data.get("table"), space),
        test=str(data["test"]) if data.get("test") else None, preset=data.get("preset"),
        scale=dict(data.get("scale") or {}), restricted=dict(data.get("restricted") or {}),
    )
    check_points(spec)
    return spec


def parse_base(base) -> dict:
    if not isinstance(base, dict):
        raise ConfigError("base: must be a mapping of TrainConfig fields")
    base = {str(k).replace("-", "_"): v for k, v in base.items()}
    owned = sorted(set(base) & set(SWEEP_OWNED_FIELDS) - {"seed"})
    if owned:
        raise ConfigError(f"base: may not set {', '.join(owned)} (the sweep controls it)")
    config = load_config(None, base)  # unknown fields and bad types fail here, with the field named
    return {k: getattr(config, k) for k in base}


def parse_prepare(prepare) -> dict:
    if not isinstance(prepare, dict):
        raise ConfigError("prepare: must be a mapping of prepare options (size, channels, normalize ...)")
    names = {f.name for f in dataclasses.fields(PrepareOptions)}
    unknown = sorted(set(prepare) - names)
    if unknown:
        raise ConfigError(f"prepare: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    prepare = dict(prepare)
    if prepare.get("size") is not None:
        size = prepare["size"]
        if not isinstance(size, list) or len(size) != 2 or not all(map(is_whole_number, size)):
            raise ConfigError(f"prepare: size must be two whole numbers [H, W], not {size!r}")
    return prepare


def parse_space(space, sampler: str) -> list[Axis]:
    if not isinstance(space, dict) or not space:
        raise ConfigError("space: must map at least one axis name to its values")
    names = [str(name).replace("-", "_") for name in space]
    reserved = sorted(set(names) & set(RESERVED_NAMES))
    if reserved:
        raise ConfigError(f"space: axis name(s) {', '.join(reserved)} are taken by results.csv columns")
    return [parse_axis(name, values, sampler) for name, values in zip(names, space.values(), strict=True)]


def parse_axis(name: str, values, sampler: str) -> Axis:
    if isinstance(values, list):
        if not values:
            raise ConfigError(f"space: axis {name} has no values")
        check_field(name)
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"space: axis {name} lists a value twice")
        return Axis(name, "grid" if sampler == "grid" else "categorical", values=list(values))
    if not isinstance(values, dict) or not values:
        raise ConfigError(f"space: axis {name} must be a list, a range {{low, high}}, {{choices}} or labelled cases")
    if "choices" in values:
        check_field(name)
        choices = values["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"space: axis {name}: choices must be a non-empty list")
        return Axis(name, "grid" if sampler == "grid" else "categorical", values=list(choices))
    if "low" in values or "high" in values:
        return parse_range(name, values, sampler)
    return parse_cases(name, values)


def parse_range(name: str, values: dict, sampler: str) -> Axis:
    if sampler == "grid":
        raise ConfigError(f"space: axis {name} is a range; a grid needs a list of values (or use sampler: tpe)")
    if name in PREPARE_FIELDS:
        raise ConfigError(f"space: {name} varies the prepared data and needs a list of values, not a range")
    check_field(name)
    extra = sorted(set(values) - {"low", "high", "log", "step"})
    if extra or "low" not in values or "high" not in values:
        raise ConfigError(f"space: range {name} takes low, high and optionally log, step")
    low, high = values["low"], values["high"]
    if not all(map(is_finite_number, (low, high))) or low >= high:
        raise ConfigError(f"space: range {name} needs numbers low < high, not {low!r}, {high!r}")
    log, step = values.get("log", False), values.get("step")
    if not isinstance(log, bool):
        raise ConfigError(f"space: range {name}: log must be true or false, not {log!r}")
    if log and low <= 0:
        raise ConfigError(f"space: log range {name} needs low > 0")
    if step is not None and not (is_real_number(step) and 0 < step <= high - low):
        raise ConfigError(f"space: range {name}: step must be a number in (0, high - low], not {step!r}")
    if step is not None and log:
        raise ConfigError(f"space: range {name}: a log range takes no step")
    is_int = isinstance(low, int) and isinstance(high, int) and isinstance(step if step is not None else 1, int)
    return Axis(name, "int" if is_int else "float", low=low, high=high, log=log, step=step)


def parse_cases(name: str, cases: dict) -> Axis:
    parsed = {}
    for label, settings in cases.items():
        if not isinstance(settings, dict) or not settings:
            raise ConfigError(f"space: case {name}={label} must map fields to values, e.g. {{loss: dice}}")
        settings = {str(k).replace("-", "_"): v for k, v in settings.items()}
        for key in settings:
            check_field(key)
        parsed[str(label)] = settings
    return Axis(name, "grid", values=list(parsed), cases=parsed)


def check_field(name: str) -> None:
    train = {f.name for f in user_fields()} - set(SWEEP_OWNED_FIELDS)
    if name not in train and name not in PREPARE_FIELDS:
        raise ConfigError(f"space: {name!r} is neither a training option nor one of {', '.join(PREPARE_FIELDS)}")


def parse_table(table, space: list[Axis]) -> dict | None:
    """The report layout (module docstring): its rows and columns must be axes of the space."""
    if table is None:
        return None
    keys = {"title", "rows", "columns", "values", "overlay"}
    if not isinstance(table, dict) or set(table) - keys:
        raise ConfigError(f"table: must be a mapping with some of {', '.join(sorted(keys))}")
    names = [axis.name for axis in space]
    rows, columns = table.get("rows", []), table.get("columns")
    named = (rows if isinstance(rows, list) else [rows]) + ([] if columns is None else [columns])
    if not isinstance(rows, list) or any(name not in names for name in named):
        raise ConfigError(f"table: rows (a list) and columns must name axes of the space ({', '.join(names)}), "
                          f"not {named}")
    values = table.get("values", [])
    if not (isinstance(values, list) and all(isinstance(v, str) for v in values)):
        raise ConfigError(f"table: values must be a list of result columns (e.g. [best_val_dice]), not {values!r}")
    return dict(table)


def parse_n_trials(n_trials, sampler: str) -> int | None:
    if n_trials is None:
        if sampler == "tpe":
            raise ConfigError("a tpe sweep needs n_trials:")
        return None
    if sampler == "grid":
        raise ConfigError("n_trials: applies to sampler tpe; a grid runs every cell")
    if not is_whole_number(n_trials) or n_trials < 1:
        raise ConfigError(f"n_trials must be a positive integer, not {n_trials!r}")
    return n_trials


def parse_repeats(repeats, base_seed: int) -> list[int]:
    if is_whole_number(repeats) and repeats >= 1:
        return [base_seed + i for i in range(repeats)]
    if isinstance(repeats, list) and repeats and all(map(is_whole_number, repeats)):
        if len(set(repeats)) != len(repeats):
            raise ConfigError("repeats: lists a seed twice")
        return list(repeats)
    raise ConfigError(f"repeats must be a positive count or a list of integer seeds, not {repeats!r}")


def parse_pruner(pruner) -> dict | None:
    """``none`` | ``median`` | ``{median: {options}}`` | ``{threshold: {lower: ...}}`` -> ``{"name", **options}``."""
    if pruner in (None, "none"):
        return None
    if pruner in PRUNERS:
        return {"name": pruner}
    if isinstance(pruner, dict) and len(pruner) == 1:
        (name, options), = pruner.items()
        if name in PRUNERS and isinstance(options or {}, dict):
            return None if name == "none" else {"name": name, **(options or {})}
    raise ConfigError(f"pruner must be one of {', '.join(PRUNERS)}, or {{NAME: {{options}}}}, not {pruner!r}")


def check_points(spec: SweepSpec) -> None:
    """Build the TrainConfig of every grid cell (or of the range ends) so bad values fail now."""
    if spec.sampler == "grid":
        points = spec.grid_cells()
    else:
        points = [{axis.name: (axis.values[0] if axis.values else axis.low) for axis in spec.space},
                  {axis.name: (axis.values[-1] if axis.values else axis.high) for axis in spec.space}]
    from rvseg.train.loop import check_options

    for params in points:
        try:
            config = spec.train_config(params, spec.seeds[0])
            check_options(config)
            if config.folds and config.fold is None:
                raise ConfigError("a sweep trains one run per point: --folds needs --fold here")
        except ConfigError as exc:
            raise ConfigError(f"space point {params}: {exc.message}") from None
        _, prepare = spec.settings(params)
        try:
            PrepareOptions(**{**spec.prepare, **prepare}).validate()
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"space point {params}: {exc}") from None


# ---------------------------------------------------------------- names


def format_value(value) -> str:
    """A short exact text for a parameter value (``0.001``, ``1e-05``; full precision if needed)."""
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    return str(value)


def run_name(params: dict, seed: int) -> str:
    """The run folder name of one point and seed: ``lr-0.001__optimizer-adam__seed-0``.

    Deterministic (a rerun finds the same folder) and filesystem-safe; names longer than
    :data:`MAX_RUN_NAME` keep their start and end in a hash of the full name, so they stay unique.
    """
    parts = [f"{key}-{format_value(value)}" for key, value in params.items()] + [f"seed-{seed}"]
    name = _UNSAFE.sub("_", "__".join(parts))
    if len(name) > MAX_RUN_NAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        name = f"{name[:MAX_RUN_NAME - 14]}__{digest}"
    return name


def cell_label(params: dict) -> str:
    """Human label of a point: ``optimizer=adam lr=0.001``."""
    return " ".join(f"{key}={format_value(value)}" for key, value in params.items())


def variant_name(prepare: dict) -> str:
    """Folder name under ``SWEEP/data/`` of a prepared variant (``base`` when nothing varies)."""
    if not prepare:
        return "base"
    return _UNSAFE.sub("_", "__".join(f"{k}-{format_value(v)}" for k, v in sorted(prepare.items())))


def data_identity(path: str | None) -> str | None:
    """``content:<hash>`` of a prepared data set (its ``dataset.json``), else the path as given."""
    if path is None:
        return None
    try:
        meta = json.loads((Path(path) / "dataset.json").read_text())
        return f"content:{meta['content_hash']}"
    except (OSError, ValueError, KeyError, TypeError):
        return path


# ---------------------------------------------------------------- presets and overrides


def _cases(**cases: dict) -> dict:
    return {label.replace("_", "-"): settings for label, settings in cases.items()}


def preset_spec(name: str, dataset: str) -> dict:
    """The SPEC mapping of a preset (the study's experiments at full scale)."""
    presets = {
        # Table 1: optimizer x scheduler x learning rate x share of the training data, Dice loss.
        "lr-grid": {
            "base": {"loss": "dice"},
            "space": {"optimizer": ["adam", "sgd"], "scheduler": ["cosine", "step"], "lr": [1e-2, 1e-3, 1e-4],
                      "fraction": [1.0, 0.8, 0.7, 0.4]},
            "repeats": 1,
            "table": {"title": "Table 1: optimizer, scheduler and learning rate against the share of training data",
                      "rows": ["optimizer", "scheduler", "lr"], "columns": "fraction",
                      "values": ["final_train_loss", "final_val_loss", "best_val_dice"]},
        },
        # Table 2: the losses, mean and sd over three seeds.
        "losses": {
            "base": {},
            "space": {"loss": _cases(
                dice={"loss": "dice"}, dice_bce={"loss": "dice-bce"},
                dice_bce_inverse={"loss": "dice-bce-inverse"},
                focal={"loss": "focal", "focal_alpha": 0.25, "focal_gamma": 2.0},
                **{f"switching-{lam}": {"loss": "switching", "switch_lambda": lam} for lam in (0.25, 0.5, 0.75)})},
            "repeats": 3,
            "table": {"title": "Table 2: losses (mean +/- sd over seeds)", "rows": ["loss"], "columns": None,
                      "values": ["best_val_dice", "test_dice", "final_val_loss"], "overlay": "val_loss"},
        },
        # The contour-map and RGB experiments: target encoding x input channels.
        "preprocessing": {
            "base": {},
            "space": {"mask_style": ["outline", "grey", "filled"], "channels": [1, 3]},
            "repeats": 1,
            "table": {"title": "Target encoding and input channels", "rows": ["mask_style"], "columns": "channels",
                      "values": ["best_val_dice", "final_val_loss"]},
        },
        # The reference run, the same with SGD, and the same with the switching loss.
        "baseline": {
            "base": {"optimizer": "adam", "lr": 5e-4, "epochs": 100, "batch_size": 16, "loss": "dice"},
            "space": {"setup": _cases(adam_dice={"optimizer": "adam"}, sgd_dice={"optimizer": "sgd"},
                                    adam_switching={"loss": "switching"})},
            "repeats": 1,
            "table": {"title": "Baseline runs", "rows": ["setup"], "columns": None,
                      "values": ["final_train_loss", "final_val_loss", "best_val_dice", "best_epoch", "seconds"]},
        },
    }
    return {"name": name, "preset": name, "dataset": dataset, "objective": "best_val_dice", "sampler": "grid",
            **pick(presets, name, "preset")}


@dataclass
class Overrides:
    """Command-line changes to a SPEC: scale-downs (recorded in ``spec.scale``) and axis cuts.

    Attributes:
        train: TrainConfig fields (``--epochs``, ``--width``, ``--set lr=0.01`` ...).
        size: ``--size H W``: prepare the data at this size.
        repeats: ``--repeats N``: seeds per cell.
        only: ``--only AXIS=V1,V2``: axis -> the values (texts, or one comma-separated text) to keep.
        test: ``--test DATASET``.
    """

    train: dict = field(default_factory=dict)
    size: tuple[int, int] | None = None
    repeats: int | None = None
    only: dict[str, list[str]] = field(default_factory=dict)
    test: str | None = None


def apply_overrides(data: dict, overrides: Overrides) -> dict:
    """A copy of the SPEC mapping ``data`` with ``overrides`` applied and recorded under ``scale``."""
    data = copy.deepcopy(data)
    data.setdefault("base", {})
    data.setdefault("scale", {})
    defaults = TrainConfig()
    for key, value in overrides.train.items():
        key = key.replace("-", "_")
        preset_value = data["base"].get(key, getattr(defaults, key, None))
        data["base"][key] = value
        data["scale"][key] = {"preset": preset_value, "used": value}
    if overrides.size is not None:
        prepare = data.setdefault("prepare", {})
        data["scale"]["size"] = {"preset": prepare.get("size", "native"), "used": list(overrides.size)}
        prepare["size"] = list(overrides.size)
    if overrides.repeats is not None:
        previous = data.get("repeats", 1)
        data["scale"]["repeats"] = {"preset": previous if isinstance(previous, int) else len(previous),
                                    "used": overrides.repeats}
        data["repeats"] = overrides.repeats
    if overrides.test is not None:
        data["test"] = overrides.test
    for axis_name, keep in overrides.only.items():
        keep = keep.split(",") if isinstance(keep, str) else keep  # "dice,focal", as --only writes it
        data["space"] = restrict_axis(data.get("space") or {}, axis_name, keep)
        data.setdefault("restricted", {})[axis_name] = list(keep)
    return data


def restrict_axis(space: dict, axis_name: str, keep: list[str]) -> dict:
    """``space`` with axis ``axis_name`` cut down to the values whose text is in ``keep``."""
    space = copy.deepcopy(space)
    key = axis_name.replace("-", "_")
    if key not in space:
        raise ConfigError(f"--only {axis_name}: no such axis; the axes are {', '.join(space)}")
    values = space[key]
    if isinstance(values, dict) and "choices" in values:
        values = values["choices"]
    if isinstance(values, list):
        kept = [v for v in values if any(_same_value(v, text) for text in keep)]
    elif isinstance(values, dict) and not ({"low", "high"} & set(values)):
        kept = {label: settings for label, settings in values.items() if str(label) in keep}
    else:
        raise ConfigError(f"--only {axis_name}: a range axis cannot be cut to values")
    if len(kept) != len(keep):
        shown = ", ".join(format_value(v) for v in values) if isinstance(values, list) else ", ".join(values)
        raise ConfigError(f"--only {axis_name}: {', '.join(keep)} not all among the axis values ({shown})")
    space[key] = kept
    return space


def _same_value(value, text: str) -> bool:
    if not is_real_number(value):
        return str(value) == text
    try:
        return math.isclose(float(value), float(text), rel_tol=1e-12, abs_tol=0.0)
    except ValueError:
        return False


def make_overrides(*, epochs: int | None = None, size: list[int] | None = None, width: int | None = None,
                   depth: int | None = None, batch_size: int | None = None, device: str | None = None,
                   repeats: int | None = None, assignments: list[str] = (), only: list[str] = (),
                   test: str | None = None) -> Overrides:
    """:class:`Overrides` from command-line values; ``assignments`` are ``FIELD=VALUE`` texts
    (``--set``), ``only`` are ``AXIS=V1,V2`` texts (``--only``)."""
    train = {k: v for k, v in {"epochs": epochs, "width": width, "depth": depth, "batch_size": batch_size,
                               "device": device}.items() if v is not None}
    for text in assignments:
        key, value = split_assignment(text, "--set FIELD=VALUE")
        try:
            train[key.replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {text}: not a YAML value ({' '.join(str(exc).split())})") from None
    load_config(None, {k: v for k, v in train.items()})  # unknown fields and bad values fail here
    cuts = {}
    for text in only:
        key, value = split_assignment(text, "--only AXIS=V1,V2")
        cuts[key] = [v.strip() for v in value.split(",") if v.strip()]
    if repeats is not None and repeats < 1:
        raise ConfigError(f"--repeats must be at least 1, not {repeats}")
    return Overrides(train=train, size=tuple(size) if size else None, repeats=repeats, only=cuts, test=test)


def split_assignment(text: str, form: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"expected {form}, got {text!r}")
    return key.strip(), value.strip()

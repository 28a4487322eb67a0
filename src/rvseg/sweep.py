"""``rvseg sweep``: resumable, parallel hyperparameter sweeps on Optuna.

A sweep folder ``SWEEP/`` holds ``sweep.json`` (the resolved SPEC, see :mod:`rvseg.sweeps.spec`),
the study (``study.db``, SQLite, unless ``--storage`` names another), one ordinary ``rvseg train``
run folder per point and seed under ``runs/`` (see :mod:`rvseg.sweeps.results`), data variants the
sweep prepared under ``data/``, ``results.csv`` (one row per run) and ``trials.json`` (the study's
trials, for the report).

**One trial = one point of the space**, trained once per seed (``repeats``), each seed in its own
run folder named after the point and seed (:func:`~rvseg.sweeps.spec.run_name`), so any process
that reaches the same point finds the same folder. The trial's value is the objective's mean over
its seeds. Each run trains in a SUBPROCESS (``rvseg train --resume``), never in the worker, so a
killed worker leaves a run folder with ``last.pt`` that the next attempt resumes, and the worker's
memory and threads stay clean.

**Resuming.** Running the same command again continues the sweep:

- finished trials (complete, pruned, failed) are not rerun (``--retry-failed`` reruns failed ones);
- a trial left RUNNING by a dead worker is detected (its owner process is gone on this machine, or
  its heartbeat in the storage is older than ``grace_s`` for another machine), marked failed as
  *interrupted*, and its point enqueued again; the new trial claims the same run folders and the
  trainer resumes from ``last.pt``;
- a run folder is trained by one process at a time (:class:`~rvseg.sweeps.claims.RunClaim`); a worker
  that reaches a point another process is training waits and then reuses the result. Results are
  read from the run folders, so nothing is counted twice.

**Parallel.** ``workers=N`` starts N worker processes on this machine against the same storage
(one GPU each, round robin, when several are visible). Other machines join by running the same
command with the same ``--storage`` (PostgreSQL/MySQL, or a journal file on a shared filesystem)
and the same ``--out`` on a filesystem they share. A worker that finds every remaining point
already running elsewhere waits for those trials instead of starting duplicates.

**Pruning** (``pruner: median``) uses the per-epoch ``metrics.csv`` of the first seed of a trial,
read while its trainer runs; a pruned trainer is stopped with SIGTERM (it saves ``last.pt``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from rvseg import __version__
from rvseg.checks import check_type
from rvseg.errors import ConfigError, DataError, RvsegError
from rvseg.io import json_safe, read_json, write_json
from rvseg.sweeps.claims import Owner, RunClaim
from rvseg.sweeps.results import (
    FINISHED,
    collect_results,
    epoch_dice,
    read_run,
    run_status,
    sweep_record,
    write_results,
)
from rvseg.sweeps.spec import (
    OBJECTIVES,
    PREPARE_FIELDS,
    Overrides,
    SweepSpec,
    apply_overrides,
    cell_label,
    load_spec,
    parse_spec,
    preset_spec,
    run_name,
    variant_name,
)
from rvseg.sweeps.storage import masked, open_storage, open_study, quiet_optuna, storage_url, study_identity
from rvseg.train.progress import read_metrics

#: Seconds between a trial's heartbeats in the storage.
HEARTBEAT_S = 15.0
#: Default age (seconds) of the last heartbeat after which another machine's trial is presumed dead.
GRACE_S = 300.0
#: How often a worker looks at its trainer's metrics.csv, and at the storage while it waits.
POLL_S = 0.5
WAIT_S = 1.0
#: How long a signalled trainer may take to save ``last.pt`` before it is killed.
STOP_TIMEOUT_S = 300.0
#: Exit code of ``rvseg`` after an interrupt.
EXIT_INTERRUPTED = 130
#: Environment variable that hands the storage URL to worker processes (kept off command lines).
STORAGE_ENV = "RVSEG_SWEEP_STORAGE"
#: User attributes this module keeps on Optuna trials.
OWNER_ATTR, HEARTBEAT_ATTR, INTERRUPTED_ATTR, RUNS_ATTR = ("rvseg_owner", "rvseg_heartbeat", "rvseg_interrupted",
                                                           "rvseg_runs")


class TrialFailed(RvsegError):
    """A run of the trial failed (the trainer exited with an error): the trial is recorded as failed."""


@dataclass
class SweepOptions:
    """How to run a sweep (not what it computes).

    Attributes:
        storage: Optuna storage: None (``sqlite:///SWEEP/study.db``), ``journal:PATH``, or a
            ``sqlite://``, ``postgresql://`` or ``mysql://`` URL.
        workers: worker processes on this machine.
        study_name: None for ``<spec name>-<spec fingerprint>``.
        grace_s: heartbeat age after which another machine's RUNNING trial is presumed dead.
        retry_failed: run the points of failed trials again.
        keep_last: keep each finished run's ``last.pt``. It only serves resuming, which a finished
            run never needs, and at full scale it is three times the size of ``best.pt`` (weights
            plus Adam's two moments): a 69-run study would otherwise leave 25 GB of them.
        verbose: print one line per finished run.
    """

    storage: str | None = None
    workers: int = 1
    study_name: str | None = None
    grace_s: float = GRACE_S
    retry_failed: bool = False
    keep_last: bool = False
    verbose: bool = True


# ---------------------------------------------------------------- the SPEC


def resolve_spec(spec_path: str | Path | None = None, preset: tuple[str, str] | None = None,
                 overrides: Overrides | None = None) -> SweepSpec:
    """The SPEC of a file or of a preset, with the command line's changes applied.

    Args:
        spec_path: a SPEC YAML file (format: :mod:`rvseg.sweeps.spec`).
        preset: ``(name, dataset)`` instead: ``lr-grid``, ``losses``, ``preprocessing`` or ``baseline``
            on a prepared data set.
        overrides: an :class:`~rvseg.sweeps.spec.Overrides` (``rvseg.api.Overrides``) that scales the
            SPEC down or cuts axes, e.g. ``Overrides(train={"epochs": 20}, only={"loss": ["dice"]})``.

    Raises:
        ConfigError: both or neither of ``spec_path`` and ``preset``, or an invalid SPEC.
    """
    if (spec_path is None) == (preset is None):
        raise ConfigError("give either a SPEC file or --preset NAME DATASET")
    if preset is not None and not (isinstance(preset, (tuple, list)) and len(preset) == 2):
        raise ConfigError(f"preset must be a (name, dataset) pair, e.g. ('losses', 'data/rvsc'), not {preset!r}")
    if overrides is not None:
        check_type(overrides, Overrides, "overrides", " (rvseg.api.Overrides(train={'epochs': 20}))")
    if preset is not None:
        data = preset_spec(preset[0], str(Path(preset[1]).resolve()))
    else:
        data = load_spec(spec_path).to_dict()
    if overrides is not None:
        test = str(Path(overrides.test).resolve()) if overrides.test is not None else None
        data = apply_overrides(data, dataclasses.replace(overrides, test=test))
    return parse_spec(data)


def record_spec(spec: SweepSpec, out: Path, study_name: str) -> None:
    """Write ``sweep.json`` (the SPEC, its identity and its study's name); refuse a SWEEP folder that
    was started with a different SPEC."""
    check_spec_unchanged(spec, out)
    write_json(out / "sweep.json", {"spec": spec.to_dict(), "identity": spec.identity(), "study": study_name,
                                    "rvseg_version": __version__})


def check_spec_unchanged(spec: SweepSpec, out: Path) -> None:
    """Refuse a SWEEP folder whose ``sweep.json`` records a different SPEC.

    The identity recorded when the folder was started is what counts: the data set it names by
    content may no longer be at its old path (the folder moved to another machine without it).
    """
    previous = sweep_record(out)
    if previous is None:
        return
    old = as_stored(previous.get("identity") or parse_spec(previous["spec"]).identity())
    new = as_stored(spec.identity())
    if old == new:
        return
    changed = sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))
    # Folders written before sweep.json kept the identity know their data only by its old path.
    lost = [previous["spec"][key] for key in ("dataset", "test") if key in changed and "identity" not in previous
            and old.get(key) == previous["spec"].get(key) and not (Path(old[key]) / "dataset.json").is_file()]
    if lost and changed in (["dataset"], ["test"], ["dataset", "test"]):
        raise ConfigError(f"this sweep folder names its data only by a path that holds no prepared set here "
                          f"({lost[0]}); put the prepared set there to continue it, or choose another --out", out)
    raise ConfigError(f"this sweep folder was started with a different spec (changed: {', '.join(changed)}); "
                      f"rerun with the same spec and overrides, or choose another --out", out)


def as_stored(data: dict) -> dict:
    """``data`` as it reads back from ``sweep.json`` (:func:`rvseg.io.write_json`: NaN as null, other
    types as text)."""
    return json.loads(json.dumps(json_safe(data), default=str))


def check_study_continues(out: Path, url: str, study_name: str) -> None:
    """Refuse to start a new study in a SWEEP folder that already holds runs of another one: their
    results would be mixed (a TPE sweep would draw its trials again). That happens when a rerun names
    another ``--storage`` than the one the sweep was started with."""
    if not any((out / "runs").glob("*/trial.json")):
        return
    with contextlib.suppress(KeyError, ValueError):
        if study_name in (summary.study_name for summary in
                          optuna.get_all_study_summaries(open_storage(url), include_best_trial=False)):
            return
    raise ConfigError(f"this sweep folder holds runs of study {study_name!r}, which {masked(url)} does not have; "
                      "rerun with the --storage the sweep was started with, or choose another --out", out)


def choose_study_name(spec: SweepSpec, out: Path, url: str, requested: str | None) -> str:
    """``--study``; else the name this SWEEP folder recorded; else a study in the storage that was made
    for this SPEC under an older default name (the default's fingerprint once covered the data's
    path); else ``<spec name>-<fingerprint>``."""
    recorded = (sweep_record(out) or {}).get("study")
    if requested and recorded and requested != recorded:
        raise ConfigError(f"this sweep folder's study is {recorded!r}: rerun without --study, or with --study "
                          f"{recorded}, or choose another --out", out)
    if requested or recorded:
        return requested or recorded
    identity = study_identity(spec)
    with contextlib.suppress(KeyError, ValueError):
        for summary in optuna.get_all_study_summaries(open_storage(url), include_best_trial=False):
            if (summary.study_name.startswith(f"{spec.name}-")
                    and summary.user_attrs.get("rvseg_spec") == identity):
                return summary.study_name
    return f"{spec.name}-{spec.fingerprint()}"


# ---------------------------------------------------------------- the state of the study


def cell_key(spec: SweepSpec, params: dict) -> tuple | None:
    """A hashable key of a point; None while a trial has not suggested every parameter yet."""
    if any(name not in params for name in spec.axis_names):
        return None
    return tuple(params[name] for name in spec.axis_names)


def counts_as_done(trial: optuna.trial.FrozenTrial) -> bool:
    """Finished for good: complete, pruned, or failed by its own run (not interrupted)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and not trial.user_attrs.get(INTERRUPTED_ATTR)


def next_action(study: optuna.Study, spec: SweepSpec) -> str:
    """``run`` a trial, ``wait`` for trials running elsewhere, or ``done``."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return "run"
    running = [t for t in trials if t.state == TrialState.RUNNING]
    done = [t for t in trials if counts_as_done(t)]
    if spec.sampler == "grid":
        taken = {cell_key(spec, t.params) for t in done + running}
        if any(cell_key(spec, cell) not in taken for cell in spec.grid_cells()):
            return "run"
    elif len(done) + len(running) < spec.n_trials:
        return "run"
    return "wait" if running else "done"


def is_stale(trial: optuna.trial.FrozenTrial, grace_s: float) -> bool:
    """A RUNNING trial whose worker is gone (see module docstring)."""
    owner = trial.user_attrs.get(OWNER_ATTR)
    if owner is not None and Owner.from_dict(owner).is_local():
        return Owner.from_dict(owner).is_gone()
    beat = trial.user_attrs.get(HEARTBEAT_ATTR)
    if beat is None and trial.datetime_start is not None:
        beat = trial.datetime_start.timestamp()
    return beat is not None and time.time() - beat > grace_s


def recover(study: optuna.Study, spec: SweepSpec, grace_s: float, retry_failed: bool = False) -> list[int]:
    """Fail stale RUNNING trials as interrupted and enqueue their points again.

    Also enqueues points whose trials failed when ``retry_failed``. Returns the numbers of the
    trials whose points were enqueued.
    """
    storage = study._storage  # the study's own (cached) storage, so its view stays consistent
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_stale(trial, grace_s):
            try:
                storage.set_trial_user_attr(trial._trial_id, INTERRUPTED_ATTR, "its worker is gone")
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # it finished meanwhile, or another worker failed it first
    trials = study.get_trials(deepcopy=False)
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    covered = {cell_key(spec, t.params) for t in trials if t.state in live}
    if not retry_failed:
        covered |= {cell_key(spec, t.params) for t in trials if counts_as_done(t)}
    enqueued = []
    for trial in trials:
        key = cell_key(spec, trial.params)
        if trial.state == TrialState.FAIL and key not in covered:
            # The same params and (for a grid) the same grid id, so the point is trained again.
            system_attrs = {k: v for k, v in trial.system_attrs.items() if k in ("grid_id", "search_space")}
            study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, params=trial.params,
                                                      distributions=trial.distributions,
                                                      system_attrs=system_attrs))
            covered.add(key)
            enqueued.append(trial.number)
    return enqueued


# ---------------------------------------------------------------- data


def check_data(spec: SweepSpec) -> None:
    """Fail before anything is written if the SPEC's data sets are missing or of the wrong kind."""
    dataset = Path(spec.dataset)
    if not dataset.is_dir():
        raise DataError("no such data set or folder", dataset)
    if spec.needs_variants():
        data_source(spec)
    elif not (dataset / "dataset.json").is_file():
        raise DataError("not a prepared data set (no dataset.json); run rvseg prepare first, or let the sweep "
                        "prepare it from this raw folder by giving prepare options (e.g. --size)", dataset)
    if spec.test and not (Path(spec.test) / "dataset.json").is_file():
        raise DataError("the test set is not a prepared data set (no dataset.json)", spec.test)


def data_source(spec: SweepSpec) -> tuple[Path, dict]:
    """``(raw source folder, base prepare options)`` from which the sweep prepares its variants."""
    dataset = Path(spec.dataset)
    meta = read_json(dataset / "dataset.json")
    if meta is None:
        return dataset, {}
    source = Path(meta.get("source", ""))
    if not source.is_dir():
        raise DataError(f"this sweep prepares its own variants of the data (prepare options or axes "
                        f"{', '.join(PREPARE_FIELDS)}), but the source recorded in dataset.json ({source}) "
                        f"is gone; pass the raw source folder instead", dataset)
    return source, dict(meta.get("options", {}))


def prepare_variants(spec: SweepSpec, out: Path, parallel: int, verbose: bool) -> None:
    """Prepare every data variant the sweep needs into ``out/data/<variant>/``, ``parallel`` at a time.

    Finished variants are reused; each variant is claimed while it is prepared, so processes on
    several machines sharing ``out`` prepare it once.
    """
    if not spec.needs_variants():
        return
    source, base_options = data_source(spec)

    def prepare_one(prepare: dict) -> None:
        target = out / "data" / variant_name(prepare)
        options = {**base_options, **spec.prepare, **prepare}
        with RunClaim(out / "data" / ".claims" / target.name):
            if (target / "dataset.json").is_file():
                return
            if verbose:
                print(f"preparing data variant {target.name} from {source}", flush=True)
            log = out / "data" / ".claims" / target.name / "prepare.log"
            code = run_child(["prepare", str(source), "--out", str(target), "--force", *prepare_flags(options)], log)
            if not (target / "dataset.json").is_file():
                raise DataError(f"preparing variant {target.name} failed (exit code {code}): {last_error(log)}",
                                source)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for future in [pool.submit(prepare_one, prepare) for prepare in variants(spec)]:
            future.result()


def variants(spec: SweepSpec) -> list[dict]:
    """The distinct prepare settings of all points of the space (ranges never touch them)."""
    lists = [axis.values for axis in spec.space if axis.values]
    names = [axis.name for axis in spec.space if axis.values]
    found = []
    for combo in itertools.product(*lists):
        params = dict(zip(names, combo, strict=True))
        prepare = {k: v for axis in spec.space if axis.name in params
                   for k, v in axis.settings(params[axis.name]).items() if k in PREPARE_FIELDS}
        if prepare not in found:
            found.append(prepare)
    return found


def prepare_flags(options: dict) -> list[str]:
    """``rvseg prepare`` flags for a PrepareOptions dict."""
    flags = ["--format", str(options.get("format", "auto")), "--channels", str(options.get("channels", 1)),
             "--mask-style", str(options.get("mask_style", "filled")),
             "--normalize", str(options.get("normalize", "percentile"))]
    if options.get("size"):
        flags += ["--size", *(str(v) for v in options["size"])]
    if options.get("clahe"):
        flags.append("--clahe")
    if options.get("skip_bad"):
        flags.append("--skip-bad")
    if options.get("labels"):
        flags += ["--labels", ",".join(options["labels"])]
    return flags


def dataset_of(spec: SweepSpec, out: Path, params: dict) -> Path:
    """The prepared data set a point trains on."""
    if not spec.needs_variants():
        return Path(spec.dataset)
    _, prepare = spec.settings(params)
    return out / "data" / variant_name(prepare)


# ---------------------------------------------------------------- child processes


def child_command(command: list[str]) -> list[str]:
    """A ``python -m rvseg.sweeps.child`` command line that dies with this process."""
    return [sys.executable, "-m", "rvseg.sweeps.child", str(os.getpid()), *command]


def run_child(command: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Run an ``rvseg`` command to completion, its output appended to ``log``; returns the exit code."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:
        proc = subprocess.Popen(child_command(command), stdout=handle, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
    try:
        return proc.wait()
    finally:
        stop_process(proc)


def exited(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``proc``; True once it has exited."""
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM a child that still runs (a trainer then saves ``last.pt``), and wait for it."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def last_error(log: Path) -> str:
    """The ``rvseg: ...`` message at the end of a log, else its last line."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        return "no output"
    messages = [line.removeprefix("rvseg: ") for line in lines if line.startswith("rvseg: ")]
    return messages[-1] if messages else (lines[-1] if lines else "no output")


# ---------------------------------------------------------------- a worker


class Heartbeat:
    """A thread that stamps the time into a trial's user attributes every ``interval`` seconds."""

    def __init__(self, trial: optuna.Trial, interval: float = HEARTBEAT_S):
        self.trial = trial
        self.interval = interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.beat, daemon=True)

    def beat(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a storage hiccup only delays the next beat
                self.trial.set_user_attr(HEARTBEAT_ATTR, time.time())
            if self.stopped.wait(self.interval):
                return

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()


class Worker:
    """One Optuna worker loop: trial after trial until the study is done (module docstring)."""

    def __init__(self, spec: SweepSpec, out: Path, study: optuna.Study, options: SweepOptions,
                 prefix: str = "", child_env: dict[str, str] | None = None):
        self.spec, self.out, self.study, self.options = spec, out, study, options
        self.prefix = prefix
        self.child_env = child_env or {}  # e.g. this worker's GPU, or its share of the CPU threads
        self.owner = Owner.current()

    def log(self, text: str) -> None:
        if self.options.verbose:
            print(self.prefix + text, flush=True)

    def run(self) -> None:
        while True:
            recover(self.study, self.spec, self.options.grace_s)
            action = next_action(self.study, self.spec)
            if action == "done":
                return
            if action == "wait":
                time.sleep(WAIT_S)
                continue
            self.study.optimize(self.objective, n_trials=1, catch=(TrialFailed,))
            write_results_csv(self.spec, self.out)

    def objective(self, trial: optuna.Trial) -> float:
        trial.set_user_attr(OWNER_ATTR, self.owner.to_dict())
        try:
            with Heartbeat(trial):
                params = suggest(trial, self.spec)
                records = []
                for repeat, seed in enumerate(self.spec.seeds):
                    record = self.run_point(trial, params, seed, report=repeat == 0 and self.spec.pruner is not None)
                    records.append(record)
                    trial.set_user_attr(RUNS_ATTR, [r["run"] for r in records])
                    if record["status"] == "pruned":
                        raise optuna.TrialPruned(f"{record['run']} pruned after epoch {record['epochs_done']}")
                    if record["status"] == "failed":
                        raise TrialFailed(f"{record['run']}: {record['error']}")
        except (optuna.TrialPruned, TrialFailed):
            raise
        except BaseException:
            # Killed, interrupted or broken from outside the run: the point is trained again next time.
            with contextlib.suppress(Exception):
                trial.set_user_attr(INTERRUPTED_ATTR, "interrupted")
            raise
        values = [objective_value(record, self.spec.objective) for record in records]
        if any(math.isnan(v) for v in values):
            raise TrialFailed(f"{cell_label(params)}: objective {self.spec.objective} is unknown (NaN)")
        return sum(values) / len(values)

    def run_point(self, trial: optuna.Trial, params: dict, seed: int, report: bool) -> dict:
        """Train (or resume, or reuse) the run folder of one point and seed; returns its record."""
        name = run_name(params, seed)
        folder = self.out / "runs" / name
        with RunClaim(folder, on_wait=lambda holder: self.log(f"{name}: being trained by {holder}; waiting for it")) \
                as claim:
            status = run_status(folder)
            if status in FINISHED:
                self.log(f"{name}: already {status}, reusing it")
            else:
                self.write_trial_files(folder, params, seed)
                resumed_from = len(read_metrics(folder))
                append_event(folder, {"event": "train", "trial": trial.number, "after_epoch": resumed_from,
                                      "owner": self.owner.to_dict(), "time": time.time()})
                self.train(folder, dataset_of(self.spec, self.out, params), claim.fd, trial if report else None)
                if run_status(folder) == "complete" and not self.options.keep_last:
                    (folder / "last.pt").unlink(missing_ok=True)
                resumed = f" after resuming at epoch {resumed_from}" if resumed_from else ""
                self.log(f"{name}: {run_status(folder)}{resumed}{outcome_suffix(read_run(folder))}")
            if self.spec.test and run_status(folder) == "complete" and not (folder / "test" / "summary.json").is_file():
                self.evaluate_test(folder)
        return read_run(folder)

    def write_trial_files(self, folder: Path, params: dict, seed: int) -> None:
        config = self.spec.train_config(params, seed)
        config.save(folder / "sweep-config.yaml")
        trial_file = folder / "trial.json"
        if not trial_file.is_file():
            write_json(trial_file, {"params": params, "seed": seed, "cell": cell_label(params),
                                    "dataset": str(dataset_of(self.spec, self.out, params)), "started": time.time()})

    def train(self, folder: Path, dataset: Path, claim_fd: int, trial: optuna.Trial | None) -> None:
        """Run the trainer subprocess to the end of the run, or until ``trial`` says to prune it
        (then ``pruned.json`` is written), or until it fails (then ``failed.json``)."""
        command = child_command(["train", str(dataset), "--out", str(folder), "--config",
                                 str(folder / "sweep-config.yaml"), "--resume"])
        env = {**os.environ, **self.child_env}
        with open(folder / "train.log", "ab") as log:
            # The claim's descriptor goes along: the claim then outlives this worker until the trainer exits.
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, pass_fds=(claim_fd,), env=env)
        try:
            reported: set[int] = set()
            while not exited(proc, POLL_S):
                if trial is not None and self.report_epochs(trial, folder, reported) and trial.should_prune():
                    stop_process(proc)
                    write_json(folder / "pruned.json", {"after_epoch": max(reported), "time": time.time()})
                    return
        finally:
            stop_process(proc)
        if proc.returncode == EXIT_INTERRUPTED:
            raise KeyboardInterrupt  # the trainer was interrupted from outside: so is the sweep
        if proc.returncode != 0 or not (folder / "summary.json").is_file():
            write_json(folder / "failed.json", {"error": last_error(folder / "train.log"),
                                                "exit_code": proc.returncode, "time": time.time()})

    def report_epochs(self, trial: optuna.Trial, folder: Path, reported: set[int]) -> bool:
        """Report epochs of ``metrics.csv`` not reported yet; True if any was new."""
        quantity = OBJECTIVES[self.spec.objective][1]
        new = False
        for row in read_metrics(folder):
            if row["epoch"] not in reported:
                value = epoch_dice(row) if quantity == "val_dice" else row["val_loss"]
                trial.report(value, step=row["epoch"])
                reported.add(row["epoch"])
                new = True
        return new

    def evaluate_test(self, folder: Path) -> None:
        """Score the run's best checkpoint on the SPEC's test set with ``rvseg evaluate`` (into ``RUN/test``):
        only patients the run neither trained nor validated on (``--split test``)."""
        device = str(self.spec.base.get("device", "auto"))
        code = run_child(["evaluate", str(folder), self.spec.test, "--split", "test", "--out", str(folder / "test"),
                          "--device", device, "--force"], folder / "test.log", self.child_env)
        if code != 0:
            self.log(f"{folder.name}: test evaluation failed (exit code {code}): {last_error(folder / 'test.log')}")


def suggest(trial: optuna.Trial, spec: SweepSpec) -> dict:
    """The trial's point: one suggestion per axis, in SPEC order."""
    params = {}
    for axis in spec.space:
        if axis.kind in ("grid", "categorical"):
            params[axis.name] = trial.suggest_categorical(axis.name, axis.values)
        elif axis.kind == "int":
            params[axis.name] = trial.suggest_int(axis.name, axis.low, axis.high, step=axis.step or 1, log=axis.log)
        else:
            params[axis.name] = trial.suggest_float(axis.name, axis.low, axis.high, step=axis.step, log=axis.log)
    return params


def objective_value(record: dict, objective: str) -> float:
    return float(record.get(objective, math.nan))


def outcome_suffix(record: dict) -> str:
    """What a run came to, as a suffix of its log line: the error of a failed run, else its best Dice."""
    if record["status"] == "failed":
        return f": {record['error']}"
    return (f"; best val Dice {record['best_val_dice']:.4f} (epoch {record['best_epoch']}), "
            f"final val loss {record['final_val_loss']:.4f}, {record['seconds']:.1f} s")


def append_event(folder: Path, event: dict) -> None:
    """One line of ``sweep-log.jsonl`` (appended in one write, so concurrent writers do not interleave)."""
    with open(folder / "sweep-log.jsonl", "a") as handle:
        handle.write(json.dumps(event) + "\n")


# ---------------------------------------------------------------- results


def write_results_csv(spec: SweepSpec, out: Path) -> list[dict]:
    """Rewrite ``SWEEP/results.csv`` from the run folders; returns the records."""
    records = collect_results(out / "runs", spec.run_order())
    write_results(out / "results.csv", records, spec.axis_names)
    return records


def export_trials(study: optuna.Study, path: Path) -> None:
    """``trials.json``: every trial's number, state, params, distributions and value (for the report)."""
    trials = []
    for trial in study.get_trials(deepcopy=False):
        trials.append({
            "number": trial.number, "state": trial.state.name, "params": trial.params,
            "distributions": {name: optuna.distributions.distribution_to_json(d)
                              for name, d in trial.distributions.items()},
            "value": trial.value, "runs": trial.user_attrs.get(RUNS_ATTR, []),
            "interrupted": bool(trial.user_attrs.get(INTERRUPTED_ATTR)),
        })
    write_json(path, {"study": study.study_name, "direction": study.direction.name.lower(), "trials": trials})


# ---------------------------------------------------------------- the sweep


def run_sweep(spec: SweepSpec, out: str | Path, options: SweepOptions | None = None) -> dict:
    """Run (or continue) a sweep; returns a summary (see module docstring for what ``out`` holds).

    Returns:
        ``{"out", "study", "storage", "runs", "by_status": {status: n}, "best": record or None,
        "results": path of results.csv}``.
    """
    check_type(spec, SweepSpec, "spec", " (from resolve_spec)")
    options = options or SweepOptions()
    check_type(options, SweepOptions, "options", " (e.g. SweepOptions(workers=2))")
    if options.workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {options.workers}")
    check_data(spec)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    url = storage_url(options.storage, out)
    study_name = choose_study_name(spec, out, url, options.study_name)
    check_spec_unchanged(spec, out)
    check_study_continues(out, url, study_name)
    with quiet_optuna():
        study = open_study(spec, url, study_name)  # checks the sampler and pruner options too
        record_spec(spec, out, study_name)  # only once all is known to be right: a bad SPEC leaves no trace
        if options.retry_failed:
            for failed in (out / "runs").glob("*/failed.json"):
                failed.unlink()
        try:
            with sigterm_as_interrupt():
                recover(study, spec, options.grace_s, retry_failed=options.retry_failed)
                prepare_variants(spec, out, options.workers, options.verbose)
                if options.verbose:
                    print(f"sweep {study_name}: {describe_size(spec)}; storage {masked(url)}; "
                          f"{options.workers} worker(s)", flush=True)
                run_workers(spec, out, study, url, options)
        finally:
            records = write_results_csv(spec, out)  # also after an interrupt: what has finished so far
        export_trials(study, out / "trials.json")
    return summarize(spec, out, study_name, url, records)


def describe_size(spec: SweepSpec) -> str:
    seeds = f" x {len(spec.seeds)} seed(s)"
    if spec.sampler == "grid":
        return f"grid of {len(spec.grid_cells())} point(s){seeds}"
    return f"tpe, {spec.n_trials} trial(s){seeds}"


def summarize(spec: SweepSpec, out: Path, study_name: str, url: str, records: list[dict]) -> dict:
    by_status: dict[str, int] = {}
    for record in records:
        by_status[record["status"]] = by_status.get(record["status"], 0) + 1
    scored = [r for r in records if not math.isnan(objective_value(r, spec.objective))]
    sign = 1 if spec.direction == "maximize" else -1
    best = max(scored, key=lambda r: sign * objective_value(r, spec.objective)) if scored else None
    return {"out": str(out), "study": study_name, "storage": masked(url), "runs": len(records),
            "by_status": by_status, "best": best, "results": str(out / "results.csv")}


def format_summary(summary: dict) -> str:
    """The lines ``rvseg sweep`` prints at the end."""
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary["by_status"].items())) or "no runs"
    lines = [f"sweep {summary['study']}: {summary['runs']} run(s): {counts}", f"  results: {summary['results']}"]
    best = summary["best"]
    if best is not None:
        lines.append(f"  best run: {best['run']}" + outcome_suffix(best))
    return "\n".join(lines)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Inside the block, SIGTERM raises KeyboardInterrupt (so trainers are stopped cleanly)."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def visible_gpus(spec: SweepSpec) -> list[str]:
    """GPU ids to hand out to workers: none for CPU runs or a device pinned with ``cuda:N``."""
    device = str(spec.base.get("device", "auto"))
    if device not in ("auto", "cuda"):
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def worker_environments(spec: SweepSpec, workers: int) -> list[dict[str, str]]:
    """Environment changes for each worker's trainers: one GPU each (round robin) when several are
    visible; for CPU runs, an equal share of the cores (unless OMP_NUM_THREADS is set), so parallel
    trainers do not oversubscribe them."""
    if workers == 1:
        return [{}]
    gpus = visible_gpus(spec)
    if len(gpus) > 1:
        return [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} for i in range(workers)]
    cpu = not gpus and str(spec.base.get("device", "auto")) in ("cpu", "auto")
    if cpu and "OMP_NUM_THREADS" not in os.environ:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        return [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} for _ in range(workers)]
    return [{} for _ in range(workers)]


def run_workers(spec: SweepSpec, out: Path, study: optuna.Study, url: str, options: SweepOptions) -> None:
    """Run ``options.workers`` workers: this process is worker 0, the others are child processes."""
    environments = worker_environments(spec, options.workers)
    procs = []
    for index, child_env in enumerate(environments[1:], start=1):
        # The storage URL (it may hold a password) goes through the environment, not the command line.
        # The SPEC goes along as this process resolved it: sweep.json may meanwhile name another
        # machine's data path (machines sharing the folder rewrite it when they start).
        command = ["worker", str(out), str(index), study.study_name, json.dumps(child_env),
                   json.dumps(dataclasses.asdict(dataclasses.replace(options, storage=None))),
                   json.dumps(as_stored(spec.to_dict()))]
        procs.append(subprocess.Popen(child_command(command), env={**os.environ, STORAGE_ENV: url}))
    try:
        Worker(spec, out, study, options, prefix="[worker 0] " if procs else "", child_env=environments[0]).run()
        codes = [proc.wait() for proc in procs]
    finally:
        for proc in procs:
            stop_process(proc)
    if EXIT_INTERRUPTED in codes:
        raise KeyboardInterrupt
    failed = [f"worker {i}: exit code {code}" for i, code in enumerate(codes, start=1) if code != 0]
    if failed:
        raise RvsegError(f"sweep worker(s) failed ({'; '.join(failed)}); rerun the same command to continue")


def worker_main(argv: list[str]) -> int:
    """Entry point of a worker process started by :func:`run_workers`."""
    parser = argparse.ArgumentParser(prog="rvseg-sweep-worker")
    for name in ("out", "index", "study", "env", "options", "spec"):
        parser.add_argument(name)
    args = parser.parse_args(argv)
    out = Path(args.out)
    spec = parse_spec(json.loads(args.spec))
    options = SweepOptions(**json.loads(args.options))
    try:
        with sigterm_as_interrupt(), quiet_optuna():
            study = open_study(spec, os.environ[STORAGE_ENV], args.study)
            Worker(spec, out, study, options, prefix=f"[worker {args.index}] ", child_env=json.loads(args.env)).run()
    except RvsegError as exc:
        print(f"rvseg: worker {args.index}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0

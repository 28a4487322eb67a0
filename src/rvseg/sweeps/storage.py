"""Where a sweep's Optuna study lives: the storage URL (SQLite in the sweep folder by default, a
journal file, or a PostgreSQL / MySQL server shared by machines), its sampler and pruner, and the
study itself, refused when it was created for another SPEC."""

from __future__ import annotations

import contextlib
import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path

import optuna

from rvseg.errors import ConfigError
from rvseg.sweeps.spec import SweepSpec


def storage_url(storage: str | None, out: Path) -> str:
    """The storage URL: the default SQLite file in ``out``, or ``storage`` with a journal path made absolute."""
    if storage is None:
        return f"sqlite:///{out / 'study.db'}"
    if storage.startswith("journal:"):
        return "journal:" + str(Path(storage.removeprefix("journal:")).expanduser().resolve())
    return storage


def masked(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, at, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url`` (see :class:`SweepOptions`)."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    scheme = url.partition(":")[0].split("+")[0]
    if scheme not in ("sqlite", "postgresql", "mysql"):
        raise ConfigError(f"--storage must be journal:PATH or a sqlite://, postgresql:// or mysql:// URL, "
                          f"not {masked(url)!r}")
    # SQLite: wait for a busy database instead of failing, so several processes can share the file.
    engine = {"connect_args": {"timeout": 120}} if scheme == "sqlite" else {"pool_pre_ping": True}
    url = with_available_driver(url)
    last = None
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine)
        except ImportError as exc:
            raise ConfigError(f"cannot open study storage {masked(url)}: {exc} (for PostgreSQL: "
                              f"pip install 'rvseg[postgres]')") from None
        except Exception as exc:  # SQLAlchemy errors: unreachable server, or a table created concurrently
            last = exc
            time.sleep(0.5 * (attempt + 1))
    raise ConfigError(f"cannot open study storage {masked(url)} ({last.__class__.__name__}: {str(last)[:300]})")


def with_available_driver(url: str) -> str:
    """``postgresql://`` with the driver that is installed: SQLAlchemy 2.1 defaults to psycopg 3,
    2.0 to psycopg2 (the ``postgres`` extra); an explicit ``postgresql+driver://`` is kept."""
    if not url.startswith("postgresql://"):
        return url
    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def make_sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    if spec.sampler == "grid":
        # A fixed seed: every process must shuffle the grid alike, since trials store only a grid index.
        return optuna.samplers.GridSampler({axis.name: axis.values for axis in spec.space}, seed=0)
    return optuna.samplers.TPESampler(seed=None)


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    if spec.pruner is None:
        return optuna.pruners.NopPruner()
    options = {k: v for k, v in spec.pruner.items() if k != "name"}
    pruner = {"median": optuna.pruners.MedianPruner, "threshold": optuna.pruners.ThresholdPruner}[spec.pruner["name"]]
    try:
        return pruner(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"pruner {spec.pruner['name']}: {exc}") from None


def open_study(spec: SweepSpec, url: str, study_name: str) -> optuna.Study:
    """Create or load the study; refuse one that was created for a different SPEC."""
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name=study_name, direction=spec.direction,
                                sampler=make_sampler(spec), pruner=make_pruner(spec), load_if_exists=True)
    identity = study_identity(spec)
    recorded = study.user_attrs.get("rvseg_spec")
    if recorded is None:
        study.set_user_attr("rvseg_spec", identity)
    elif recorded != identity:
        raise ConfigError(f"study {study_name!r} in {masked(url)} belongs to a different sweep spec; "
                          f"use another --study name")
    return study


@contextlib.contextmanager
def quiet_optuna(level: int = optuna.logging.ERROR) -> Iterator[None]:
    """Optuna's log at ``level`` inside the block, then as it was (a notebook's own studies keep theirs).

    A sweep's workers print each run's outcome; Optuna's own log would repeat failures with tracebacks.
    """
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(level)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def study_identity(spec: SweepSpec) -> dict:
    """The SPEC without its paths, so machines that mount the data elsewhere share one study."""
    return {k: v for k, v in spec.identity().items() if k not in ("dataset", "test")}

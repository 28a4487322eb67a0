"""Who works on what: the identity of a worker process, whether it still lives, and run-folder claims.

A run folder is claimed with an exclusive ``flock`` on ``RUN/.claim``. The kernel drops the lock
when the last process holding it ends, however it ends (a crash, SIGKILL, a lost machine on NFSv4
after its lease), so a claim can never go stale and needs no clean-up. The worker passes the locked
descriptor to its training subprocess: the claim then lasts until the trainer has also exited, so a
rerun never starts a second trainer while a signalled one is still saving ``last.pt``.

Several machines may share a sweep folder on a network filesystem whose locks work across clients
(NFSv4, CephFS, Lustre with ``flock``); POSIX only.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

CLAIM_FILE = ".claim"
#: How often a waiting worker retries a held claim (seconds).
CLAIM_POLL_S = 0.5


def boot_id() -> str:
    """This machine's boot id (Linux), so that a process id is only compared within one boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start_ticks(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux), or None if it does not run.

    Together with the pid it names one process: a recycled pid has a later start time. A zombie (a
    dead process its parent has not reaped yet, as a sweep's worker 0 leaves a killed worker until
    its own work ends) does not run.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses, so split after its ')': then field 3
    # (the state) is the first, field 22 (the start time) the 20th.
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


@dataclass(frozen=True)
class Owner:
    """One worker process: host name, boot id, pid and the process's start time."""

    host: str
    boot: str
    pid: int
    started: int | None

    @classmethod
    def current(cls) -> Owner:
        pid = os.getpid()
        return cls(socket.gethostname(), boot_id(), pid, process_start_ticks(pid))

    @classmethod
    def from_dict(cls, data: dict) -> Owner:
        return cls(str(data["host"]), str(data["boot"]), int(data["pid"]), data.get("started"))

    def to_dict(self) -> dict:
        return asdict(self)

    def is_local(self) -> bool:
        return self.host == socket.gethostname() and bool(self.boot) and self.boot == boot_id()

    def is_gone(self) -> bool:
        """True only when this is a process of this machine and boot that no longer runs."""
        if not self.is_local():
            return False
        started = process_start_ticks(self.pid)
        return started is None or (self.started is not None and started != self.started)


class RunClaim:
    """An exclusive claim on a run folder (module docstring); a context manager.

    Args:
        folder: the run folder (created if missing).
        on_wait: called once, with a description of the holder, if another process holds the
            claim and we wait for it.
    """

    def __init__(self, folder: str | Path, on_wait: Callable[[str], None] | None = None):
        self.folder = Path(folder)
        self.on_wait = on_wait
        self.fd: int | None = None

    def __enter__(self) -> RunClaim:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / CLAIM_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            waited = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not waited and self.on_wait is not None:
                        self.on_wait(holder_text(path))
                    waited = True
                    time.sleep(CLAIM_POLL_S)
            # Who holds it, for a human looking at the folder; the lock itself is what counts.
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({**Owner.current().to_dict(), "since": time.time()}).encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def holder_text(path: Path) -> str:
    """``host pid N`` of the process that last took the claim at ``path`` (best effort)."""
    try:
        data = json.loads(path.read_text() or "{}")
        return f"{data['host']} pid {data['pid']}"
    except (OSError, ValueError, KeyError):
        return "another process"

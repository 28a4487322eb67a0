"""``python -m rvseg.sweeps.child PARENT_PID ARGS...``: an ``rvseg`` process that dies with its parent.

Sweep workers and the trainers they start run through this launcher. It asks Linux to send the
process SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), so a worker killed with SIGKILL does
not leave an orphan trainer behind: the trainer gets SIGTERM, saves ``last.pt`` mid-epoch and exits,
and a rerun resumes from there. ``ARGS`` is an ``rvseg`` command line, or ``worker ...`` for a
sweep worker (:func:`rvseg.sweep.worker_main`).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """SIGTERM this process when its parent exits (Linux; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str]) -> int:
    parent, *command = argv
    die_with_parent(int(parent))
    if command[:1] == ["worker"]:
        from rvseg.sweep import worker_main

        return worker_main(command[1:])
    from rvseg.cli import main as rvseg_main

    return rvseg_main(command)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

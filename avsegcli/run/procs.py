"""Decode-worker hygiene: a worker process dies with the run that started it, whatever killed the run.

* :func:`guard_worker` -- in a decode worker: exit within a second once the parent process is gone (any signal,
  SIGKILL included), and keep native decoder noise off the user's terminal.
* :func:`guarded_worker` -- the process target: the guard first, then the heavy imports and the work.

This module imports nothing heavy, so the guard is up within a fraction of a second of a worker starting.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import signal
import threading
import time


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when the thread that started it exits (prctl PR_SET_PDEATHSIG).
    Works even while the process is busy importing torch, before any Python thread of ours runs."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError, TypeError):
        pass


def guard_worker(parent_pid: int, *, poll_s: float = 0.5, quiet_stderr: bool = True) -> None:
    """Call first thing in a worker process: the kernel kills it when its parent goes (:func:`_die_with_parent`),
    and, for the cases that misses (not Linux, a parent thread that ends), a daemon thread ends the process as
    soon as ``parent_pid`` is no longer its parent, whatever signal the parent died of (checked every ``poll_s``
    seconds). With ``quiet_stderr``, file descriptor 2 goes to /dev/null (decoders print from native code) unless
    ``AVSEG_WORKER_STDERR`` is set (``avseg run -v``). If the parent is already gone, exits."""
    _die_with_parent()
    if os.getppid() != parent_pid:
        os._exit(0)
    if quiet_stderr and not os.environ.get("AVSEG_WORKER_STDERR"):
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        except OSError:
            pass

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(poll_s)

    threading.Thread(target=watch, name="avseg-parent-watch", daemon=True).start()


def guarded_worker(parent_pid: int, module: str, function: str, *args) -> None:
    """Process target for decode workers: :func:`guard_worker` first, *then* import ``module`` (a module NAME, such
    as ``"avsegcli.run.decode"``: importing it loads torch) and run ``module.function(*args)``."""
    guard_worker(parent_pid)
    getattr(importlib.import_module(module), function)(*args)

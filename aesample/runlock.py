"""``RUN/aesample.lock``: one process at a time writes into a run directory.

The lock file holds the owner's PID, host, the process start time (``/proc``, Linux) and the command. It is
created with ``O_EXCL``; a lock whose owner is gone (same host, PID not running, or the PID now belongs to
another process) is *stale*: :func:`acquire` replaces it and says so, :func:`describe` reports it. A lock held
from another host cannot be checked and is never taken over.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

__all__ = ["LOCK_NAME", "LockInfo", "RunLockedError", "acquire", "release", "read_lock", "describe"]

LOCK_NAME = "aesample.lock"


class RunLockedError(ValueError):
    """Another live process holds the run directory's lock."""


@dataclass
class LockInfo:
    """A lock file read back; ``alive``: True (owner runs), False (stale), None (other host: unknown)."""

    path: Path
    pid: int
    host: str
    started: str
    command: str
    alive: Optional[bool]

    def owner(self) -> str:
        return f"PID {self.pid} on {self.host}, since {self.started}"


def _start_ticks(pid: int) -> Optional[str]:
    """Start time of process ``pid`` in clock ticks since boot (Linux); None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of stat; fields 3.. follow the ')'


def _pid_alive(pid: int, ticks: Optional[str]) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    now = _start_ticks(pid)
    return ticks is None or now is None or now == ticks  # a reused PID has another start time


def read_lock(run_dir: Path) -> Optional[LockInfo]:
    """The lock of ``run_dir`` (None when there is none or it is unreadable)."""
    path = Path(run_dir) / LOCK_NAME
    try:
        data = json.loads(path.read_text())
        pid, host = int(data["pid"]), str(data["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    alive = _pid_alive(pid, data.get("start_ticks")) if host == socket.gethostname() else None
    return LockInfo(path, pid, host, str(data.get("started", "?")), str(data.get("command", "")), alive)


def acquire(run_dir: Path, command: Optional[str] = None, log=None) -> Path:
    """Create ``run_dir/aesample.lock`` for this process; a stale lock is replaced (and reported via ``log``).

    Raises
    ------
    RunLockedError
        If a live process (or one on another host, which cannot be checked) holds the lock.
    """
    path = Path(run_dir) / LOCK_NAME
    record = json.dumps({
        "pid": os.getpid(), "host": socket.gethostname(), "start_ticks": _start_ticks(os.getpid()),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": command if command is not None else " ".join(["aesample"] + sys.argv[1:]),
    })
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            info = read_lock(run_dir)
            if info is None:  # being written right now, or garbage: look again
                time.sleep(0.05)
                info = read_lock(run_dir)
            if info is not None and info.pid == os.getpid() and info.host == socket.gethostname():
                return path  # ours already
            if info is not None and info.alive is not False:
                where = "" if info.alive else " (on another host: cannot check that it still runs)"
                raise RunLockedError(
                    f"{run_dir} is in use by {info.owner()}{where}: `{info.command}`; wait for it to end"
                    + (f", or remove {path} if no such process runs" if info.alive is None else ""))
            if log is not None:
                log(f"{run_dir}: stale lock of " + (info.owner() if info else "an unknown process")
                    + " (not running) replaced")
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(record)
        return path
    raise RunLockedError(f"{run_dir}: could not take the lock {path}")


def release(run_dir: Path) -> None:
    """Remove the lock if this process holds it."""
    info = read_lock(run_dir)
    if info is not None and info.pid == os.getpid() and info.host == socket.gethostname():
        try:
            info.path.unlink()
        except FileNotFoundError:
            pass


def describe(run_dir: Path) -> Optional[str]:
    """One phrase for ``aesample status``: who runs the directory, or that its lock is stale; None if unlocked."""
    info = read_lock(run_dir)
    if info is None:
        return None
    if info.alive:
        return f"running: {info.owner()}"
    if info.alive is None:
        return f"locked by {info.owner()} (another host: cannot check that it still runs)"
    return f"not running: stale lock of {info.owner()} (killed or crashed)"

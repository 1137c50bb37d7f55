"""Exclusive locks on the files and folders one process writes: a second process refuses with a clear message.

`exclusive(path, what)` holds an flock on `path` (created if needed) for the duration of a `with`
block. The lock file records who holds it (host, pid, start time) so the refusal can say so. The
kernel releases an flock when its process dies, even by kill -9, so a crash never leaves a stale lock.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path


class LockedError(RuntimeError):
    """Another process holds the lock."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return (f"pid {info.get('pid')} on {info.get('host')}, since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info.get('since', 0)))}")
    except (OSError, ValueError):
        return "another process"


@contextlib.contextmanager
def exclusive(path: str | Path, what: str):
    """Hold an exclusive lock on `path` for the block; raise LockedError naming `what` and the holder when taken."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"{what} is in use by {_holder(path)} (lock {path}); wait for it to finish, or stop "
                              f"it, then run again") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}).encode())
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock

"""Append-only JSON Lines files that survive being killed.

Writers append one complete line per record and flush it, so a crash loses at most the record being
written. Readers accept a torn last line (no trailing newline, not valid JSON): it is a record that
was never finished. A bad line anywhere else is corruption and an error naming the file and line.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Iterator


class JsonlError(ValueError):
    pass


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    torn_tail = not data.endswith(b"\n")
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if torn_tail and lineno == len(lines):
                return  # an unfinished last record
            raise JsonlError(f"{path}:{lineno}: not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
        if not isinstance(record, dict):
            raise JsonlError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        yield record


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    return list(iter_jsonl(path)) if path.exists() else []


def drop_torn_tail(path: Path) -> int:
    """Cut an unfinished last line so new records start on a line of their own. Returns bytes removed."""
    if not path.exists():
        return 0
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        # find the last newline; everything after it is the torn record
        block = 65536
        pos = size
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            idx = chunk.rfind(b"\n")
            if idx >= 0:
                keep = start + idx + 1
                f.truncate(keep)
                return size - keep
            pos = start
        f.truncate(0)
        return size


class JsonlAppender:
    """Thread-safe appender: one flushed line per record, never rewriting what is there."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        drop_torn_tail(self.path)
        self._file = open(self.path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_jsonl_atomic(path: str | Path, records: list[dict]) -> None:
    """Write a whole derived file at once (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)

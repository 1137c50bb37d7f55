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


def read_json_or_none(path: str | Path):
    """A JSON file the tools wrote, or None when it is missing or unreadable (it is then rebuilt)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a whole file at once: a temporary file with a name no other process uses, then a rename, so a
    reader sees the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path: str | Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, ensure_ascii=False, default=str) + "\n")


def write_jsonl_atomic(path: str | Path, records: list[dict]) -> None:
    """Write a whole derived file at once (see write_text_atomic)."""
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_jsonl_strict(path: str | Path) -> list[tuple[int, dict]]:
    """A hand-written JSONL file (prompts, eval sets, hand labels): every non-blank line must be a JSON object.
    Returns (line number, record) pairs. A leading BOM is ignored. Unlike the logs the tools append to, a
    malformed last line is an error here, not a torn record: nobody was writing this file when it stopped."""
    path = Path(path)
    if path.is_dir():
        raise JsonlError(f"{path}: is a folder, expected a JSONL file")
    if not path.exists():
        raise JsonlError(f"{path}: file not found")
    out = []
    for lineno, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise JsonlError(f"{path}:{lineno}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r}); "
                             f"save the file as UTF-8") from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise JsonlError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(record, dict):
            raise JsonlError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        out.append((lineno, record))
    return out


def read_text_strict(path: str | Path) -> str:
    """A hand-written text file (persona, .txt prompts), BOM stripped, with encoding errors naming file:line."""
    path = Path(path)
    if path.is_dir():
        raise JsonlError(f"{path}: is a folder, expected a text file")
    if not path.exists():
        raise JsonlError(f"{path}: file not found")
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = data[:e.start].count(b"\n") + 1
        raise JsonlError(f"{path}:{lineno}: not UTF-8 text; save the file as UTF-8") from None

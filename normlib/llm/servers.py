"""Inference servers started by normlib: start, prove ready with one real request, stop.

A server that answers `/v1/models` is not necessarily able to generate: a llama.cpp build with an
instruction set the machine cannot run answers the listing, then dies on the first completion.
So "ready" here means one short chat (or completions) request came back with text. Every failure
names the URL and shows the tail of the server's log.

Used by scripts/demo.sh (`python -m normlib.llm.servers wait ...`), by the tests' llama.cpp fixture and
by eval.py when it drives its own servers (`[eval] server_command`).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests


class ServerError(RuntimeError):
    """A server that did not start, did not answer, or died."""


def log_tail(path: str | Path | None, lines: int = 25) -> str:
    if not path or not Path(path).exists():
        return "(no log)"
    text = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:]) or "(log is empty)"


def _alive(proc: subprocess.Popen | None, pid: int | None) -> tuple[bool, str]:
    if proc is not None:
        code = proc.poll()
        return (code is None, f"exit code {code}" if code is not None else "")
    if pid is not None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False, "process gone"
        except PermissionError:
            return True, ""
        try:  # a dead child its parent has not reaped yet is still listed, as a zombie
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return False, "process exited"
        except (OSError, IndexError):
            pass
    return True, ""


def probe_request(base_url: str, kind: str, model: str, timeout: float) -> str:
    """One short generation; returns its text. Raises requests exceptions or ServerError."""
    base = base_url.rstrip("/")
    if kind == "chat":
        body = {"model": model, "messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 4,
                "temperature": 0}
        resp = requests.post(f"{base}/chat/completions", json=body, timeout=timeout)
    else:
        body = {"model": model, "prompt": "Hello", "max_tokens": 2, "temperature": 0}
        resp = requests.post(f"{base}/completions", json=body, timeout=timeout)
    if resp.status_code != 200:
        raise ServerError(f"HTTP {resp.status_code}: {resp.text[:300]}")
    choice = resp.json()["choices"][0]
    return (choice.get("message") or {}).get("content") or choice.get("text") or ""


def wait_until_ready(base_url: str, *, proc: subprocess.Popen | None = None, pid: int | None = None,
                     log_path: str | Path | None = None, timeout: float = 180.0, kind: str = "chat",
                     model: str = "probe", what: str = "server") -> float:
    """Block until the server at base_url (…/v1) lists its models and completes one short request.
    Returns the seconds it took. Raises ServerError (with the log's tail) if the process dies or time runs out."""
    start = time.monotonic()
    listed = False
    last_error = ""
    while time.monotonic() - start < timeout:
        alive, why = _alive(proc, pid)
        if not alive:
            raise ServerError(f"{what} at {base_url} died before it was ready ({why}). Last lines of its log "
                              f"({log_path}):\n{log_tail(log_path)}")
        try:
            if not listed:
                requests.get(f"{base_url.rstrip('/')}/models", timeout=5).raise_for_status()
                listed = True
            probe_request(base_url, kind, model, timeout=max(5.0, timeout - (time.monotonic() - start)))
            return time.monotonic() - start
        except (requests.RequestException, ServerError, ValueError, KeyError, IndexError) as e:
            last_error = str(e)[:300]
            if listed:
                # it listed its models but the generation failed: give it a moment, it may be dying
                alive, why = _alive(proc, pid)
                if not alive:
                    raise ServerError(f"{what} at {base_url} answered /models but died on its first generation "
                                      f"request ({why}): a build the CPU cannot run (see README Troubleshooting). "
                                      f"Last lines of its log ({log_path}):\n{log_tail(log_path)}") from None
            time.sleep(0.5)
    raise ServerError(f"{what} at {base_url} was not ready within {timeout:.0f} s (last error: {last_error}). "
                      f"Last lines of its log ({log_path}):\n{log_tail(log_path)}")


class ManagedServer:
    """A server process started from an argument list, ready-checked, and stopped (with its children)."""

    def __init__(self, argv: list[str], base_url: str, log_path: str | Path, *, kind: str = "chat",
                 model: str = "probe", timeout: float = 300.0, env: dict | None = None, what: str = "server"):
        self.argv, self.base_url, self.log_path = argv, base_url, Path(log_path)
        self.kind, self.model, self.timeout, self.env, self.what = kind, model, timeout, env, what
        self.proc: subprocess.Popen | None = None
        self.ready_seconds = float("nan")

    def start(self) -> "ManagedServer":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env=None if self.env is None else {**os.environ, **self.env})
        except OSError as e:
            raise ServerError(f"could not start {self.what} ({' '.join(self.argv[:3])} ...): {e}") from None
        finally:
            log.close()
        try:
            self.ready_seconds = wait_until_ready(self.base_url, proc=self.proc, log_path=self.log_path,
                                                  timeout=self.timeout, kind=self.kind, model=self.model,
                                                  what=self.what)
        except BaseException:
            self.stop()
            raise
        return self

    def check_alive(self) -> None:
        alive, why = _alive(self.proc, None)
        if not alive:
            raise ServerError(f"{self.what} at {self.base_url} died ({why}). Last lines of its log "
                              f"({self.log_path}):\n{log_tail(self.log_path)}")

    def stop(self, grace: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and any workers it started
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=grace)

    def __enter__(self) -> "ManagedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Wait until an OpenAI-compatible server can generate.")
    sub = ap.add_subparsers(dest="command", required=True)
    w = sub.add_parser("wait", help="wait for /models and one short generation request")
    w.add_argument("url", help="base URL including /v1")
    w.add_argument("--pid", type=int, help="server process id: fail at once if it exits")
    w.add_argument("--log", help="server log, whose tail is shown on failure")
    w.add_argument("--timeout", type=float, default=180.0, help="seconds (default 180)")
    w.add_argument("--kind", choices=("chat", "completions"), default="chat")
    w.add_argument("--model", default="probe", help="model name sent with the probe request")
    args = ap.parse_args(argv)
    try:
        seconds = wait_until_ready(args.url, pid=args.pid, log_path=args.log, timeout=args.timeout, kind=args.kind,
                                   model=args.model)
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"server at {args.url} answered a {args.kind} request after {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluation through inference servers that eval.py starts itself (`[eval] backend = "vllm"`).

The visible GPUs are split into groups of `[eval] server_gpus`. Each group takes the next checkpoint,
starts `[eval] server_command` for it (by default `vllm serve`) with CUDA_VISIBLE_DEVICES set to the group
and a free port, waits until the server answers a real completion request, generates every missing answer
through it (the same code path as `backend = "openai"`), stops it, and takes the next checkpoint. Each
server's output goes to `<results>/servers/<label>.log`; a server that fails to start fails that checkpoint
only, and the others go on.
"""
from __future__ import annotations

import shlex
import socket
import sys
import threading
from pathlib import Path

from normlib.core.manifest import Manifest

DEFAULT_SERVER_COMMAND = "vllm serve {checkpoint} --port {port} --served-model-name {label} --tensor-parallel-size {gpus}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_argv(manifest: Manifest, checkpoint: str, label: str, port: int, gpus: int) -> list[str]:
    template = manifest.eval.server_command or DEFAULT_SERVER_COMMAND
    return [part.format(checkpoint=checkpoint, port=port, label=label, gpus=gpus) for part in shlex.split(template)]


def checkpoint_location(manifest: Manifest, ev) -> str:
    """What a server loads: the exported folder, a hub id, or for a GGUF the dequantised Hugging Face copy."""
    from normlib.core.models import gguf_as_hf_folder, resolve_model
    cfg = manifest.models.get(ev.model) if ev.arm == "base" else None
    source = resolve_model(ev.checkpoint, manifest.root, cfg.revision if cfg else "",
                           cfg.trust_remote_code if cfg else False)
    return str(gguf_as_hf_folder(source.location)) if source.kind == "gguf" else source.location


def _say(line: str, stream=None) -> None:
    """One write per line, so that lines from several server threads do not interleave."""
    stream = stream or sys.stdout
    stream.write(line + "\n")
    stream.flush()


def generate_with_servers(manifest: Manifest, evaluated: list, groups: list[list[str]], generate_one,
                          log_dir: Path) -> tuple[int, list[str]]:
    """Run `generate_one(ev, base_url) -> answers made` for every evaluated model, each through its own server,
    one per GPU group at a time. Returns (answers made, failures as 'label: why')."""
    from normlib.llm.servers import ManagedServer, ServerError

    queue = list(evaluated)
    lock = threading.Lock()
    made, failures = [0], []

    def worker(group: list[str]):
        while True:
            with lock:
                if not queue:
                    return
                ev = queue.pop(0)
            port = free_port()
            url = f"http://127.0.0.1:{port}/v1"
            try:
                argv = server_argv(manifest, checkpoint_location(manifest, ev), ev.label, port, len(group))
                server = ManagedServer(argv, url, log_dir / f"{ev.label}.log", kind="completions", model=ev.label,
                                       timeout=manifest.eval.server_timeout,
                                       env={"CUDA_VISIBLE_DEVICES": ",".join(group)}, what=f"server for {ev.label}")
                _say(f"[{ev.label}] starting a server on GPU(s) {','.join(group)}, port {port}")
                server.start()
            except (ServerError, OSError, ValueError) as e:
                with lock:
                    failures.append(f"{ev.label}: {e}")
                _say(f"[{ev.label}] server failed to start: {e}", sys.stderr)
                continue
            try:
                n = generate_one(ev, url)
                with lock:
                    made[0] += n
            except Exception as e:  # noqa: BLE001 - one checkpoint's failure must not stop the others
                with lock:
                    failures.append(f"{ev.label}: {type(e).__name__}: {e}")
                _say(f"[{ev.label}] failed: {e}", sys.stderr)
            finally:
                server.stop()

    threads = [threading.Thread(target=worker, args=(g,), daemon=True) for g in groups]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return made[0], failures

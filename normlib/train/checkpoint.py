"""Resumable training states and the final export, for one process, DDP and FSDP2 alike.

Layout of a run folder, ckpt/<experiment>/<run>/:
  state/step_0000200/   resumable state: model + optimizer (torch.distributed.checkpoint, sharded under
                        FSDP), trainer.json (step, data position, loss history) and rng_rank<R>.pt
  model/                the exported Hugging Face folder (safetensors, tokenizer, generation config,
                        normlib_chat.json) that transformers and vLLM load
  composition.json      which examples of which condition the run trained on
  train_log.jsonl       one line per logged optimizer step
  run.json              written last; {"status": "finished", ...} marks a finished run

A state is written to a temporary folder and renamed, so a crash never leaves a half-written state
that a rerun would load. A state that cannot be read anyway (a truncated file copied from elsewhere)
is reported and the previous one is tried. The RNG files are read with torch.load(weights_only=True),
which cannot run code; the DCP metadata is a pickle, so state/ folders must come from a trusted source.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)

STATE_DIR = "state"
STATE_PREFIX = "step_"


def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def state_folders(run_dir: Path) -> list[Path]:
    root = run_dir / STATE_DIR
    if not root.exists():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(STATE_PREFIX)
            and (p / "trainer.json").exists()]
    return sorted(done, key=lambda p: int(p.name[len(STATE_PREFIX):]))


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(run_dir: Path, model, optimizer, trainer_state: dict, rank: int, keep_last: int) -> Path:
    """Collective: every rank calls it. Returns the new state folder."""
    step = trainer_state["step"]
    final = run_dir / STATE_DIR / f"{STATE_PREFIX}{step:07d}"
    tmp = run_dir / STATE_DIR / f".tmp-{STATE_PREFIX}{step:07d}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
    _barrier()
    if rank == 0:
        (tmp / "trainer.json").write_text(json.dumps(trainer_state, indent=1, default=str))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in state_folders(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_state(folder: Path, model, optimizer, rank: int) -> dict:
    """Collective: restores model, optimizer and this rank's RNG in place; returns trainer.json."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rng_file = folder / f"rng_rank{rank}.pt"
    if rng_file.exists():  # absent when resuming on a different number of ranks
        set_rng_state(torch.load(rng_file, weights_only=True))
    return json.loads((folder / "trainer.json").read_text())


def read_trainer_json(folder: Path) -> dict | None:
    """A state's trainer.json, or None when it is unreadable."""
    try:
        data = json.loads((folder / "trainer.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def full_model_state_dict(hf_model) -> dict:
    """Collective: the complete, unsharded state dict on CPU (rank 0 gets it; others get an empty dict).
    Tied parameters (e.g. lm_head = embed_tokens) appear once, as save_pretrained expects."""
    state = get_model_state_dict(hf_model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    first_name = {}
    for name, param in hf_model.named_parameters(remove_duplicate=False):
        if id(param) in first_name:
            state.pop(name, None)
        else:
            first_name[id(param)] = name
    return state

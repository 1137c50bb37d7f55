"""train.py under torchrun (2 processes, gloo): DDP and FSDP2 end where one process with the same
global batch ends, and the FSDP export reloads in transformers."""
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, free_port, make_project

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def train(manifest, nproc: int, *sets):
    args = [str(REPO / "train.py"), "--manifest", str(manifest), "--arm", "values", "--no-progress",
            "--set", "train.export_dtype='fp32'"]  # compare weights at full precision
    for s in sets:
        args += ["--set", s]
    if nproc == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(free_port()), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(manifest.parent / "ckpt/tiny/values--tiny--seed0/model/model.safetensors")


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, mode):
    kw = dict(n=16, epochs=3, budget=160)
    single = train(make_project(tmp_path / "single", **kw), 1)
    multi = train(make_project(tmp_path / mode, **kw), 2, f"train.parallel='{mode}'")
    assert single.keys() == multi.keys()
    for name in single:
        torch.testing.assert_close(multi[name], single[name], atol=2e-5, rtol=1e-4, msg=name)

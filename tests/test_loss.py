"""The loss is exact: it matches transformers' own loss, ignores how a step is split into micro-batches
and ranks (docs/design.md, section 2), and packing keeps attention inside each example."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import free_port
from grad_setup import examples_and_model, micro_batches
from normlib.train.data import collate
from normlib.train.loss import SupervisedLM
from normlib.train.trainer import forward_backward

HERE = Path(__file__).resolve().parent


def step_gradients(batch: int, packing: bool = False):
    examples, hf_model, pad_id = examples_and_model()
    model = SupervisedLM(hf_model)
    mbs = micro_batches(examples, list(range(len(examples))), batch, pad_id, packing=packing)
    total = sum(mb.supervised_token_count for mb in mbs)
    loss = forward_backward(model, "single", mbs, total, 1, torch.device("cpu"), None)
    return {n: p.grad.clone() for n, p in hf_model.named_parameters()}, float(loss) / total


def assert_same_grads(a, b, tol=1e-5):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=tol, rtol=1e-4, msg=f"gradient of {name} differs")


def test_loss_matches_transformers_token_mean():
    examples, hf_model, pad_id = examples_and_model()
    model = SupervisedLM(hf_model)
    summed, count = 0.0, 0
    for ex in examples:
        out = hf_model(input_ids=torch.tensor([ex.input_ids]), labels=torch.tensor([ex.labels]))
        summed += out.loss.item() * ex.supervised_token_count
        count += ex.supervised_token_count
    mb = collate(examples, [[i] for i in range(len(examples))], pad_id)
    ours, ours_count = model(mb.input_ids, mb.position_ids, mb.labels)
    assert ours_count == count == mb.supervised_token_count
    assert ours.item() / ours_count == pytest.approx(summed / count, rel=1e-5)


def test_batch8_equals_batch1_times_accumulation8():
    g8, loss8 = step_gradients(batch=8)
    g1, loss1 = step_gradients(batch=1)
    assert loss8 == pytest.approx(loss1, rel=1e-6)
    assert_same_grads(g8, g1)


def test_packed_rows_give_the_loss_and_gradients_of_examples_run_one_by_one():
    one_by_one, loss_one = step_gradients(batch=1)
    packed, loss_packed = step_gradients(batch=4, packing=True)  # two rows of four examples each
    assert loss_packed == pytest.approx(loss_one, rel=1e-5)
    assert_same_grads(one_by_one, packed, tol=2e-5)


def test_packing_keeps_attention_inside_each_example():
    examples, hf_model, pad_id = examples_and_model()
    hf_model.eval()
    a, b, c = examples[0], examples[1], examples[2]
    row1 = collate([a, b], [[0, 1]], pad_id)
    row2 = collate([a, c], [[0, 1]], pad_id)  # same first example, different neighbour
    # use_cache=False as in training: transformers only derives the packed mask when no KV cache is in use
    with torch.no_grad():
        l1 = hf_model(input_ids=row1.input_ids, position_ids=row1.position_ids, use_cache=False).logits
        l2 = hf_model(input_ids=row2.input_ids, position_ids=row2.position_ids, use_cache=False).logits
        alone = hf_model(input_ids=torch.tensor([a.input_ids])).logits
        b_alone = hf_model(input_ids=torch.tensor([b.input_ids])).logits
    n = len(a)
    torch.testing.assert_close(l1[0, :n], l2[0, :n])
    torch.testing.assert_close(l1[0, :n], alone[0], atol=1e-5, rtol=1e-5)
    # and the second example does not see the first
    torch.testing.assert_close(l1[0, n:n + len(b)], b_alone[0], atol=1e-5, rtol=1e-5)


def test_step_with_no_supervised_tokens_gives_zero_loss_and_gradients():
    examples, hf_model, pad_id = examples_and_model()
    for ex in examples:
        ex.labels = [-100] * len(ex.labels)
    model = SupervisedLM(hf_model)
    mb = collate(examples, [[0], [1]], pad_id)
    summed, count = model(mb.input_ids, mb.position_ids, mb.labels)
    assert count == 0 and summed.item() == 0.0
    summed.backward()
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in hf_model.parameters())


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_equal_one_process(tmp_path, mode):
    out = tmp_path / f"{mode}.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(HERE / "dist_grads.py"), "--mode", mode, "--batch", "4", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = torch.load(out)
    single, loss = step_gradients(batch=8)
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert_same_grads(single, result["grads"])

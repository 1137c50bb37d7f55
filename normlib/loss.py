"""The training loss: summed token cross-entropy over supervised positions only.

Two exactness rules (DESIGN-NOTES section 2):
- The caller divides the *sum* by the number of supervised tokens in the whole optimizer step
  (all micro-batches, all ranks), so the loss does not depend on how the step is split.
- Logits are computed only where a label is trained, in chunks that are recomputed in the backward
  pass, so a 128k vocabulary never materialises [tokens, vocab] fp32 logits for the whole batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from normlib.chat import IGNORE_INDEX

LOGIT_CHUNK = 2048  # supervised positions per logits chunk


def supervised_targets(labels: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of the positions whose next token is trained, and those next tokens.

    Position t predicts token t+1; a target at the start of an example (position id 0) would be
    predicted from the previous packed example, so it is never a target (it is a prompt token anyway).
    """
    target = labels[:, 1:]
    keep = (target != IGNORE_INDEX) & (position_ids[:, 1:] != 0)
    rows, cols = keep.nonzero(as_tuple=True)
    flat = rows * labels.shape[1] + cols
    return flat, target[rows, cols]


def _chunk_loss(hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module) -> torch.Tensor:
    logits = head(hidden).float()
    return F.cross_entropy(logits, targets, reduction="sum")


def supervised_cross_entropy_sum(hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor,
                                 position_ids: torch.Tensor, chunk: int = LOGIT_CHUNK) -> tuple[torch.Tensor, int]:
    """Sum of cross-entropy over trained tokens, and their number. hidden: [rows, T, H]."""
    flat, targets = supervised_targets(labels, position_ids)
    count = int(targets.numel())
    if count == 0:
        # Keep the graph connected so every parameter gets a (zero) gradient under DDP/FSDP.
        return hidden.sum() * 0.0 + sum(p.sum() for p in head.parameters()) * 0.0, 0
    selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, count, chunk):
        h, t = selected[start:start + chunk], targets[start:start + chunk]
        if torch.is_grad_enabled() and count > chunk:
            total = total + checkpoint(_chunk_loss, h, t, head, use_reentrant=False)
        else:
            total = total + _chunk_loss(h, t, head)
    return total, count


class SupervisedLM(nn.Module):
    """Wraps a Hugging Face causal LM; forward returns (summed loss, supervised token count).

    Being one module with a single forward lets DDP and FSDP2 hooks see every parameter use,
    including the output head that we call directly instead of through the model's own forward.
    """

    def __init__(self, causal_lm: nn.Module):
        super().__init__()
        self.lm = causal_lm

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, labels: torch.Tensor):
        out = self.lm.base_model(input_ids=input_ids, position_ids=position_ids, use_cache=False)
        return supervised_cross_entropy_sum(out.last_hidden_state, self.lm.get_output_embeddings(),
                                            labels, position_ids)

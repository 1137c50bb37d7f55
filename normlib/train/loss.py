"""The training loss: summed token cross-entropy over supervised positions only.

Three exactness rules:
- The caller divides the *sum* by the number of supervised tokens in the whole optimizer step
  (all micro-batches, all ranks), so the loss does not depend on how the step is split.
- Logits are computed only where a label is trained, in chunks; when a micro-batch's logits would
  be large (a 128k vocabulary) the chunks are recomputed in the backward pass instead of kept.
- The head is applied as the model's own forward applies it: some architectures post-process the
  logits (Gemma 2/3 soft-capping, Cohere's logit_scale, Granite's logits_scaling). `check_head`
  compares our logits with the model's own on a few tokens before training, so an architecture that
  does something else fails loudly instead of training on the wrong loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from normlib.core.chat import IGNORE_INDEX

LOGIT_CHUNK = 2048  # supervised positions per logits chunk
RECOMPUTE_ABOVE = 1 << 28  # supervised positions x vocabulary above which chunks are recomputed (1 GiB of fp32 logits)


class HeadMismatch(RuntimeError):
    """The model's own logits differ from the output head applied as normlib applies it."""


def logit_postprocess(config):
    """The final transformation of the head's output for architectures that have one, else None."""
    cap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)
    divisor = getattr(config, "logits_scaling", None)
    if cap:
        return lambda logits: torch.tanh(logits / cap) * cap
    if scale is not None and scale != 1.0:
        return lambda logits: logits * scale
    if divisor is not None and divisor != 1.0:
        return lambda logits: logits / divisor
    return None


@torch.no_grad()
def check_head(causal_lm: nn.Module, input_ids: torch.Tensor, atol: float = 1e-3) -> None:
    """Raise HeadMismatch unless head(hidden) (post-processed) equals the model's own logits on input_ids."""
    was_training = causal_lm.training
    causal_lm.eval()
    try:
        own = causal_lm(input_ids=input_ids, use_cache=False).logits.float()
        hidden = causal_lm.base_model(input_ids=input_ids, use_cache=False).last_hidden_state
        ours = causal_lm.get_output_embeddings()(hidden).float()
        post = logit_postprocess(causal_lm.config)
        if post is not None:
            ours = post(ours)
    finally:
        causal_lm.train(was_training)
    worst = float((own - ours).abs().max())
    if not worst <= atol * max(1.0, float(own.abs().max())):
        raise HeadMismatch(
            f"{type(causal_lm).__name__}: its forward transforms the output head's logits in a way normlib does not "
            f"reproduce (largest difference {worst:.3g}); normlib computes the loss from the head directly, so "
            f"training this architecture would optimise the wrong loss. Add its transformation to "
            f"normlib.train.loss.logit_postprocess.")


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


def _chunk_loss(hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module, post=None) -> torch.Tensor:
    logits = head(hidden).float()
    if post is not None:
        logits = post(logits)
    return F.cross_entropy(logits, targets, reduction="sum")


def supervised_cross_entropy_sum(hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor,
                                 position_ids: torch.Tensor, chunk: int = LOGIT_CHUNK,
                                 post=None) -> tuple[torch.Tensor, int]:
    """Sum of cross-entropy over trained tokens, and their number. hidden: [rows, T, H]; `post` transforms the
    head's logits (logit_postprocess)."""
    flat, targets = supervised_targets(labels, position_ids)
    count = int(targets.numel())
    if count == 0:
        # Keep the graph connected so every parameter gets a (zero) gradient under DDP/FSDP.
        return hidden.sum() * 0.0 + sum(p.sum() for p in head.parameters()) * 0.0, 0
    selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat)
    total = hidden.new_zeros((), dtype=torch.float32)
    recompute = torch.is_grad_enabled() and count * head.weight.shape[0] > RECOMPUTE_ABOVE
    for start in range(0, count, chunk):
        h, t = selected[start:start + chunk], targets[start:start + chunk]
        if recompute:
            total = total + checkpoint(_chunk_loss, h, t, head, post, use_reentrant=False)
        else:
            total = total + _chunk_loss(h, t, head, post)
    return total, count


class SupervisedLM(nn.Module):
    """Wraps a Hugging Face causal LM; forward returns (summed loss, supervised token count).

    Being one module with a single forward lets DDP and FSDP2 hooks see every parameter use,
    including the output head that we call directly instead of through the model's own forward.
    """

    def __init__(self, causal_lm: nn.Module):
        super().__init__()
        self.lm = causal_lm
        self.post = logit_postprocess(causal_lm.config)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, labels: torch.Tensor,
                packed: bool = True):
        """`packed=False` promises that every row's positions are 0..T-1 (one example per row, padding after it):
        the model then derives them itself and takes its plain causal path, which on CPU runs ~14% faster than
        being handed the same positions (transformers then checks them for packed sequences)."""
        out = self.lm.base_model(input_ids=input_ids, position_ids=position_ids if packed else None, use_cache=False)
        return supervised_cross_entropy_sum(out.last_hidden_state, self.lm.get_output_embeddings(),
                                            labels, position_ids, post=self.post)

"""Log-probs of target tokens through the output head, a chunk of rows at a time, with a hand-written backward.

``log p(y_n | h_n) = z_n[y_n] - logsumexp(z_n)``, ``z_n = W h_n``, for ``N`` answer positions only.
Autograd over chunked, checkpointed logits keeps, in the backward pass, a float32 copy of a
chunk's logits, the softmax, its gradient in float32 and bfloat16, and one head gradient per
chunk (summed afterwards: a second ``[V, H]`` tensor, 1.02 GiB on the 7B). Here the backward
recomputes a chunk's logits and turns them into their gradient in place,
``dL/dz_n = g_n (onehot(y_n) - softmax(z_n))``, and adds ``dz^T h`` into one head gradient:
at most one chunk of logits in float32 and one in the weights' dtype exist, and one ``[V, H]``
gradient. The arithmetic is autograd's (logits in the weights' dtype, softmax in float32,
gradients cast back to the weights' dtype before the two matrix products), so the result is the
same; the forward pass computes the logits once and the backward once more, as checkpointing did.

Liger-Kernel's fused linear cross-entropy does the same in Triton kernels. It runs on CUDA only
(these run on every device, so the CPU tests and the fake-tensor memory measurement see the path
the GPU runs) and returns a reduced loss or, for per-token values, re-enters its forward in the
backward pass; the elementwise passes it fuses move ~0.5 GB a chunk here, under a millisecond a
step on an H100.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

HEAD_CHUNK = 512  # rows of logits at a time: [512, 152,064] float32 is 0.29 GiB on Qwen's vocabulary


def _logits(hidden: Tensor, weight: Tensor) -> Tensor:
    """``[c, V]`` logits in float32 (float64 for a float64 model), from a product in the weights' dtype."""
    logits = hidden @ weight.T
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


class _HeadLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int) -> Tensor:
        logp, norms = [], []
        for start in range(0, hidden.shape[0], chunk_size):
            logits = _logits(hidden[start : start + chunk_size], weight)
            norm = torch.logsumexp(logits, dim=-1)
            logp.append(logits.gather(-1, targets[start : start + chunk_size, None]).squeeze(-1) - norm)
            norms.append(norm)
            del logits
        ctx.save_for_backward(hidden, weight, targets, torch.cat(norms))
        ctx.chunk_size = chunk_size
        return torch.cat(logp)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        hidden, weight, targets, norms = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            g = grad[rows, None].to(norms.dtype)
            dz = _logits(hidden[rows], weight).sub_(norms[rows, None]).exp_().mul_(-g)  # -g softmax(z)
            dz.scatter_add_(1, targets[rows, None], g)  # + g at the target
            dz = dz.to(weight.dtype)
            if grad_hidden is not None:
                torch.mm(dz, weight, out=grad_hidden[rows])
            if grad_weight is not None:
                grad_weight.addmm_(dz.T, hidden[rows])
            del dz
        return grad_hidden, grad_weight, None, None


def token_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int = HEAD_CHUNK) -> Tensor:
    """``log p(y_n | x_<n)`` of the targets: ``hidden: [N, H]`` (answer positions only), ``weight: [V, H]`` (the
    output head), ``targets: [N]`` -> ``[N]`` float32 (float64 for a float64 model).

    The ``[N, V]`` logits are never held whole: ``chunk_size`` rows at a time, forward and backward.
    """
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.promote_types(hidden.dtype, torch.float32))
    return _HeadLogprobs.apply(hidden, weight, targets, chunk_size)

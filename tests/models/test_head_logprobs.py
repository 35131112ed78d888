"""Log-probs through the output head, chunked with a hand-written backward: equal to the full logits, one head gradient."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cme_vlm.models.head_logprobs import token_logprobs


def inputs(dtype: torch.dtype, n: int = 11, hidden: int = 6, vocabulary: int = 37):
    generator = torch.Generator().manual_seed(0)
    h = torch.randn(n, hidden, generator=generator, dtype=torch.float64).to(dtype).requires_grad_()
    w = torch.randn(vocabulary, hidden, generator=generator, dtype=torch.float64).to(dtype).requires_grad_()
    targets = torch.randint(0, vocabulary, (n,), generator=generator)
    upstream = torch.randn(n, generator=generator, dtype=torch.float64)  # per token, as DPO's sums weight them
    return h, w, targets, upstream


@pytest.mark.parametrize("chunk_size", [1, 4, 11, 64])
def test_values_and_gradients_equal_the_full_logits_in_float64(chunk_size):
    h, w, targets, upstream = inputs(torch.float64)
    ours = token_logprobs(h, w, targets, chunk_size)
    grads = torch.autograd.grad((ours * upstream).sum(), (h, w))
    full = torch.log_softmax(h @ w.T, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    expected = torch.autograd.grad((full * upstream).sum(), (h, w))
    torch.testing.assert_close(ours, full, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_bfloat16_follows_autograd_over_float32_logits():
    """The weights' dtype: logits from a bf16 product, softmax in float32, gradients cast back, as autograd does."""
    h, w, targets, upstream = inputs(torch.bfloat16)
    ours = token_logprobs(h, w, targets, 4)
    grads = torch.autograd.grad((ours * upstream.float()).sum(), (h, w))
    logits = (h @ w.T).float()
    autograd = logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    expected = torch.autograd.grad((autograd * upstream.float()).sum(), (h, w))
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, autograd)
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)  # bf16 sums over chunks in another order


class HeadSized(TorchDispatchMode):
    """How many new tensors of the head's shape ``[V, H]`` the operators make (in-place results and views aside)."""

    def __init__(self, shape: torch.Size) -> None:
        super().__init__()
        self.shape, self.count = shape, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        fresh = not func._schema.is_mutable and func._schema.returns[0].alias_info is None
        if isinstance(out, torch.Tensor) and out.shape == self.shape and fresh:
            self.count += 1
        return out


def test_the_backward_makes_one_head_gradient_for_all_chunks():
    """The trap: a ``[V, H]`` gradient per chunk, summed (1.02 GiB each on the 7B), beside the chunk's logits."""
    h, w, targets, upstream = inputs(torch.float32, n=40)
    logp = token_logprobs(h, w, targets, 8)  # five chunks
    with HeadSized(w.shape) as made:
        (logp * upstream.float()).sum().backward()
    assert made.count == 1

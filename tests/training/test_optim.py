"""The bf16-safe update rule keeps small updates; the schedule warms up and decays."""

from __future__ import annotations

import torch

from cme_vlm.training.optim import KahanAdamW, warmup_cosine


def _run(dtype: torch.dtype, optimizer_cls, steps: int = 400) -> torch.Tensor:
    torch.manual_seed(0)
    start = torch.randn(256) * 0.02
    target = torch.randn(256)
    w = torch.nn.Parameter(start.to(dtype).clone())
    opt = optimizer_cls([w], lr=1e-6)
    for _ in range(steps):
        opt.zero_grad()
        ((w.float() - target) ** 2).sum().backward()
        opt.step()
    return w.detach().float() - start.to(dtype).float()


def test_kahan_bf16_follows_fp32_where_plain_bf16_drops_updates():
    fp32 = _run(torch.float32, torch.optim.AdamW)
    kahan = _run(torch.bfloat16, KahanAdamW)
    plain = _run(torch.bfloat16, torch.optim.AdamW)
    assert fp32.abs().mean() > 3e-4  # 400 steps of ~1e-6 each
    assert (kahan - fp32).norm() / fp32.norm() < 0.15
    assert (plain - fp32).norm() / fp32.norm() > 0.9  # plain bf16 AdamW loses nearly everything


def test_kahan_in_fp32_matches_torch_adamw():
    torch.testing.assert_close(_run(torch.float32, KahanAdamW, 50), _run(torch.float32, torch.optim.AdamW, 50), rtol=1e-2, atol=2e-7)


def test_warmup_then_cosine_to_floor():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=100, warmup_ratio=0.1, min_lr_ratio=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.1 and lrs[9] == 1.0
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert abs(lrs[-1] - 0.1) < 0.01

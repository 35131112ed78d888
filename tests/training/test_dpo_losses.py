"""The hand-written DPO losses against a direct transcription of the papers' formulas."""

from __future__ import annotations

import math

import pytest
import torch

from cme_vlm.errors import ConfigError
from cme_vlm.schema import DPOLoss
from cme_vlm.training.dpo_losses import dpo_loss

BETA = 0.3
EPS = 0.2


def _paper(pw: torch.Tensor, pl: torch.Tensor, rw: torch.Tensor, rl: torch.Tensor, kind: str, eps: float) -> torch.Tensor:
    """Per-pair losses written element by element from the papers, in float64 Python math."""
    out = []
    for a, b, c, d in zip(pw.tolist(), pl.tolist(), rw.tolist(), rl.tolist()):
        h = (a - c) - (b - d)
        sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
        if kind == "sigmoid":
            out.append(-(1 - eps) * math.log(sig(BETA * h)) - eps * math.log(sig(-BETA * h)))
        elif kind == "robust":
            out.append(((1 - eps) * -math.log(sig(BETA * h)) - eps * -math.log(sig(-BETA * h))) / (1 - 2 * eps))
        elif kind == "ipo":
            out.append((h - 1 / (2 * BETA)) ** 2)
        else:
            out.append(max(0.0, 1 - BETA * h))
    return torch.tensor(out, dtype=torch.float64)


def _paper_autograd(pw: torch.Tensor, pl: torch.Tensor, rw: torch.Tensor, rl: torch.Tensor, kind: str, eps: float):
    """The same formulas as float64 tensor ops, for autograd."""
    h = (pw - rw) - (pl - rl)
    sig = lambda x: 1 / (1 + torch.exp(-x))  # noqa: E731
    if kind == "sigmoid":
        losses = -(1 - eps) * torch.log(sig(BETA * h)) - eps * torch.log(sig(-BETA * h))
    elif kind == "robust":
        losses = ((1 - eps) * -torch.log(sig(BETA * h)) - eps * -torch.log(sig(-BETA * h))) / (1 - 2 * eps)
    elif kind == "ipo":
        losses = (h - 1 / (2 * BETA)) ** 2
    else:
        losses = torch.clamp(1 - BETA * h, min=0)
    return losses.mean()


def _random_logps(seed: int, n: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [-torch.rand(n, generator=g) * 40 - 5 for _ in range(4)]


CASES = [("sigmoid", 0.0), ("sigmoid", EPS), ("robust", EPS), ("ipo", 0.0), ("hinge", 0.0)]


@pytest.mark.parametrize(("kind", "eps"), CASES)
def test_matches_paper_formula(kind: str, eps: float) -> None:
    pw, pl, rw, rl = _random_logps(0)
    out = dpo_loss(pw, pl, rw, rl, beta=BETA, loss=DPOLoss(kind), label_smoothing=eps)
    expected = _paper(pw, pl, rw, rl, kind, eps)
    torch.testing.assert_close(out.losses.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.accepted_rewards, BETA * (pw - rw))
    torch.testing.assert_close(out.rejected_rewards, BETA * (pl - rl))
    assert out.accuracy.item() == pytest.approx(((pw - rw) > (pl - rl)).float().mean().item())


@pytest.mark.parametrize(("kind", "eps"), CASES)
def test_gradients_match_float64_autograd(kind: str, eps: float) -> None:
    base = _random_logps(1)
    ours = [t.clone().requires_grad_(True) for t in base]
    dpo_loss(*ours, beta=BETA, loss=DPOLoss(kind), label_smoothing=eps).loss.backward()
    ref = [t.double().requires_grad_(True) for t in base]
    _paper_autograd(*ref, kind, eps).backward()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-4, atol=1e-6)
    assert ours[0].grad.abs().sum() > 0


def test_sft_term_adds_weighted_nll() -> None:
    pw, pl, rw, rl = _random_logps(2)
    nll = torch.rand(16)
    plain = dpo_loss(pw, pl, rw, rl, beta=BETA)
    mixed = dpo_loss(pw, pl, rw, rl, beta=BETA, sft_weight=0.5, accepted_nll=nll)
    torch.testing.assert_close(mixed.losses, plain.losses + 0.5 * nll)
    with pytest.raises(ValueError, match="accepted_nll"):
        dpo_loss(pw, pl, rw, rl, beta=BETA, sft_weight=0.5)


def test_bad_hyperparameters_are_config_errors() -> None:
    pw, pl, rw, rl = _random_logps(3)
    with pytest.raises(ConfigError, match="dpo.beta"):
        dpo_loss(pw, pl, rw, rl, beta=0.0)
    with pytest.raises(ConfigError, match="label_smoothing"):
        dpo_loss(pw, pl, rw, rl, beta=BETA, loss=DPOLoss.robust, label_smoothing=0.5)

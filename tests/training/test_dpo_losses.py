"""The hand-written preference losses against a direct transcription of the papers' formulas; the loss registry."""

from __future__ import annotations

import math

import pytest
import torch

from cme_vlm.errors import ConfigError
from cme_vlm.models.logprobs import PairLogps
from cme_vlm.schema import DPOConfig
from cme_vlm.training import dpo_losses
from cme_vlm.training.dpo_losses import PreferenceLoss, build_loss, register_loss

BETA = 0.3
EPS = 0.2


def _paper(pw: torch.Tensor, pl: torch.Tensor, rw: torch.Tensor, rl: torch.Tensor, kind: str, eps: float) -> torch.Tensor:
    """Per-pair losses written element by element from the papers, in float64 Python math."""
    out = []
    for a, b, c, d in zip(pw.tolist(), pl.tolist(), rw.tolist(), rl.tolist()):
        h = (a - c) - (b - d)
        sig = lambda x: 1.0 / (1.0 + math.exp(-x))
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
    sig = lambda x: 1 / (1 + torch.exp(-x))
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


def _lengths(seed: int, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 60, (n,), generator=g), torch.randint(1, 60, (n,), generator=g)


def _loss(kind: str, eps: float = 0.0, sft_weight: float = 0.0) -> PreferenceLoss:
    return build_loss(DPOConfig(loss=kind, beta=BETA, label_smoothing=eps, sft_weight=sft_weight))


def _on_paper_logps(kind, pw, pl, rw, rl, na, nr):
    """IPO's paper defines it on length-averaged log-probs; the others on summed ones."""
    return (pw / na, pl / nr, rw / na, rl / nr) if kind == "ipo" else (pw, pl, rw, rl)


CASES = [("sigmoid", 0.0), ("sigmoid", EPS), ("robust", EPS), ("ipo", 0.0), ("hinge", 0.0)]


@pytest.mark.parametrize(("kind", "eps"), CASES)
def test_matches_paper_formula(kind: str, eps: float) -> None:
    pw, pl, rw, rl = _random_logps(0)
    na, nr = _lengths(0)
    out = _loss(kind, eps)(PairLogps(pw, pl, na, nr), rw, rl)
    qw, ql, sw, sl = _on_paper_logps(kind, pw, pl, rw, rl, na, nr)
    torch.testing.assert_close(out.losses.double(), _paper(qw, ql, sw, sl, kind, eps), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.accepted_rewards, BETA * (pw - rw))  # every variant's rewards: summed log-ratios
    torch.testing.assert_close(out.rejected_rewards, BETA * (pl - rl))
    assert out.correct.mean().item() == pytest.approx(((pw - rw) > (pl - rl)).float().mean().item())


def test_ipo_loss_reads_length_averaged_log_ratios_and_its_rewards_summed_ones_as_trl_logs_them() -> None:
    """TRL's DPOTrainer (``_compute_loss``, loss_type ipo): the loss on ``logratio / completion tokens``, and
    ``rewards/chosen = β · chosen_logratios`` (summed), accuracy ``chosen_rewards > rejected_rewards``, margin their
    difference. Here a pair whose summed and averaged conventions disagree about which answer earns more."""
    pw, pl = torch.tensor([-30.0, -12.0]), torch.tensor([-40.0, -30.0])
    rw, rl = torch.tensor([-32.0, -10.0]), torch.tensor([-41.0, -31.0])
    na, nr = torch.tensor([40, 10]), torch.tensor([5, 10])  # pair 0: summed +2 vs +1, averaged 0.05 vs 0.2
    out = _loss("ipo")(PairLogps(pw, pl, na, nr), rw, rl)
    chosen, rejected = BETA * (pw - rw), BETA * (pl - rl)  # TRL's rewards
    torch.testing.assert_close(out.accepted_rewards, chosen)
    torch.testing.assert_close(out.rejected_rewards, rejected)
    torch.testing.assert_close(out.margin, chosen - rejected)
    assert out.correct.tolist() == (chosen > rejected).float().tolist() == [1.0, 0.0]
    averaged = ((pw - rw) / na) > ((pl - rl) / nr)
    assert averaged.tolist() == [False, False]  # what the rewards would say on averaged log-ratios
    h = (pw - rw) / na - (pl - rl) / nr
    torch.testing.assert_close(out.losses, (h - 1 / (2 * BETA)) ** 2)


@pytest.mark.parametrize(("kind", "eps"), CASES)
def test_gradients_match_float64_autograd(kind: str, eps: float) -> None:
    base = _random_logps(1)
    na, nr = _lengths(1)
    ours = [t.clone().requires_grad_(True) for t in base]
    _loss(kind, eps)(PairLogps(ours[0], ours[1], na, nr), ours[2], ours[3]).loss.backward()
    ref = [t.double().requires_grad_(True) for t in base]
    _paper_autograd(*_on_paper_logps(kind, *ref, na.double(), nr.double()), kind, eps).backward()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-4, atol=1e-6)
    assert ours[0].grad.abs().sum() > 0


def test_sft_term_adds_weighted_per_token_nll() -> None:
    pw, pl, rw, rl = _random_logps(2)
    na, nr = _lengths(2)
    policy = PairLogps(pw, pl, na, nr)
    plain, mixed = _loss("sigmoid")(policy, rw, rl), _loss("sigmoid", sft_weight=0.5)(policy, rw, rl)
    torch.testing.assert_close(mixed.losses, plain.losses + 0.5 * (-pw / na))


def test_bad_hyperparameters_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="dpo.beta"):
        build_loss(DPOConfig(beta=0.0))
    with pytest.raises(ConfigError, match="label_smoothing"):
        build_loss(DPOConfig(loss="robust", label_smoothing=0.5))


def test_unknown_loss_names_the_registered_ones() -> None:
    with pytest.raises(ConfigError, match="dpo.loss='simpo'.*hinge, ipo, robust, sigmoid"):
        build_loss(DPOConfig(loss="simpo"))


def test_a_new_variant_is_one_class_and_a_config_value(monkeypatch: pytest.MonkeyPatch) -> None:
    from cme_vlm.config import load_config

    monkeypatch.setattr(dpo_losses, "LOSSES", dict(dpo_losses.LOSSES))

    @register_loss("exponential")
    class ExponentialLoss(PreferenceLoss):
        """``exp(−βh)``."""

        def pair_losses(self, h: torch.Tensor) -> torch.Tensor:
            return torch.exp(-self.beta * h)

    cfg = load_config(None, ["dpo.loss=exponential", f"dpo.beta={BETA}", "dpo.sft_weight=0"])
    pw, pl, rw, rl = _random_logps(4)
    out = build_loss(cfg.dpo)(PairLogps(pw, pl, *_lengths(4)), rw, rl)
    torch.testing.assert_close(out.losses, torch.exp(-BETA * ((pw - rw) - (pl - rl))))

"""The DPO reference during training: log-probs precomputed in the batch, or a live reference model.

``PrecomputedReference`` reads the ``ref_logp_*`` columns that the preference stage wrote (no
reference model held). The alternatives are an in-memory frozen copy (``InMemoryReference``) or,
when the policy is a LoRA model, the same model with its adapters disabled
(``AdapterDisabledReference``).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from cme_vlm.errors import ConfigError, DataError
from cme_vlm.models.logprobs import pair_logprobs


class Reference(Protocol):
    def logps(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Summed reference log-probs ``([B], [B])`` of the accepted and rejected answers."""


class PrecomputedReference:
    """Reads the log-probs stored in the batch; holds no model."""

    def logps(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        accepted, rejected = batch["ref_logp_accepted"], batch["ref_logp_rejected"]
        if not (torch.isfinite(accepted).all() and torch.isfinite(rejected).all()):
            raise DataError(
                "a preference batch has no reference log-probs (NaN) but dpo.reference=precomputed. "
                "Re-run `cme-vlm preference build`, or set dpo.reference=in_memory."
            )
        return accepted.float(), rejected.float()


class InMemoryReference:
    """A frozen copy of the SFT model, run without gradients beside the policy."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval().requires_grad_(False)

    @torch.no_grad()
    def logps(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        out = pair_logprobs(self.model, batch)
        return out.accepted, out.rejected


class AdapterDisabledReference:
    """The LoRA policy itself with its adapters switched off: the SFT model at no extra memory."""

    def __init__(self, policy: nn.Module) -> None:
        if not hasattr(policy, "disable_adapter"):
            raise ConfigError(
                "dpo.reference=adapter_disabled needs a LoRA policy, but no component of dpo.freezing is 'lora'. "
                "Set a component to lora, or use dpo.reference=precomputed."
            )
        self.policy = policy

    @torch.no_grad()
    def logps(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        was_training = self.policy.training
        self.policy.eval()  # no dropout in the reference
        with self.policy.disable_adapter():
            out = pair_logprobs(self.policy, batch)
        self.policy.train(was_training)
        return out.accepted, out.rejected

"""The DPO reference: precomputed answer log-probs of the frozen SFT model, or a live reference.

``precompute_reference`` runs the frozen SFT model once over the preference pairs and stores
``ref_logp_accepted`` / ``ref_logp_rejected``, so DPO training holds no reference model. The
alternatives for training are an in-memory frozen copy (``InMemoryReference``) or, when the
policy is a LoRA model, the same model with its adapters disabled (``AdapterDisabledReference``).
"""

from __future__ import annotations

from typing import Protocol

import torch
from datasets import Dataset
from rich.progress import Progress
from torch import Tensor, nn

from cme_vlm.errors import ConfigError, DataError
from cme_vlm.models.loading import LoadedModel
from cme_vlm.data.collate import ChatEncoder
from cme_vlm.preference.pairs import collate_pairs, pair_logprobs
from cme_vlm.preference.records import PREFERENCE_FEATURES


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


@torch.no_grad()
def precompute_reference(loaded: LoadedModel, pairs: Dataset, batch_size: int, max_length: int) -> Dataset:
    """``pairs`` with ``ref_logp_accepted`` / ``ref_logp_rejected`` from one pass of the frozen model."""
    loaded.model.eval()
    encoder = ChatEncoder(loaded, max_length)
    accepted: list[float] = []
    rejected: list[float] = []
    with Progress(transient=True) as progress:
        task = progress.add_task("reference log-probs", total=len(pairs))
        for start in range(0, len(pairs), batch_size):
            rows = [pairs[i] for i in range(start, min(start + batch_size, len(pairs)))]
            batch = {k: v.to(loaded.model.device) for k, v in collate_pairs(encoder, rows).items()}
            out = pair_logprobs(loaded.model, batch)
            accepted += out.accepted.double().tolist()
            rejected += out.rejected.double().tolist()
            progress.advance(task, len(rows))
    pairs = pairs.remove_columns(["ref_logp_accepted", "ref_logp_rejected"])
    for name, values in (("ref_logp_accepted", accepted), ("ref_logp_rejected", rejected)):
        pairs = pairs.add_column(name, values, feature=PREFERENCE_FEATURES[name])
    return pairs.select_columns(list(PREFERENCE_FEATURES))

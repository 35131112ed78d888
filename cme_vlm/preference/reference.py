"""Reference log-probs for DPO, precomputed: the frozen SFT model run once over the preference pairs.

``precompute_reference`` stores ``ref_logp_accepted`` / ``ref_logp_rejected`` in the preference
dataset, so DPO training holds no reference model (``cme_vlm.training.reference``).
"""

from __future__ import annotations

import torch
from datasets import Dataset
from rich.progress import Progress

from cme_vlm.data.preference_records import PREFERENCE_FEATURES
from cme_vlm.models.encoding import ChatEncoder, collate_pairs
from cme_vlm.models.loading import LoadedModel
from cme_vlm.models.logprobs import pair_logprobs


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

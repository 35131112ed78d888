"""Pair batches and the shared-image forward of every family: same log-probs and gradients as encoding each
sequence's image."""

from __future__ import annotations

import pytest
import torch
from forward_counts import counting_forwards
from PIL import Image
from tiny_families import TINY_FAMILIES, float64_copy, tiny_model

from cme_vlm.models.encoding import ChatEncoder, collate_pairs
from cme_vlm.models.logprobs import pair_logprobs

EXAMPLES = [
    {"overlay": Image.new("RGB", (112, 112), (200, 40 * i, 60)), "prompt": "What is highlighted?",
     "accepted": "The inferior mesenteric vein, lateral to the flexure." if i else "The duodenum.",
     "rejected": "Mesentery.", "ref_logp_accepted": -1.5}
    for i in range(3)
]


def test_pair_batch_layout(tiny_loaded) -> None:
    batch = collate_pairs(ChatEncoder(tiny_loaded), EXAMPLES)
    assert batch["input_ids"].shape[0] == 6 and batch["image_grid_thw"].shape[0] == 3
    assert batch["pixel_values"].shape[0] == int(batch["image_grid_thw"].prod(-1).sum())
    decoded = tiny_loaded.tokenizer.decode(batch["labels"][1][batch["labels"][1] != -100])
    assert decoded == EXAMPLES[1]["accepted"] + "<|im_end|>"
    assert tiny_loaded.tokenizer.decode(batch["labels"][4][batch["labels"][4] != -100]) == "Mesentery.<|im_end|>"
    assert batch["ref_logp_accepted"].tolist() == [-1.5] * 3 and batch["ref_logp_rejected"].isnan().all()


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_shared_image_forward_matches_separate_encoding(name: str) -> None:
    """One image encoding per pair gives the log-probs (float64, to 1e-10) and gradients of encoding each sequence's.

    The gradients agree to float32 precision: the vision towers keep some steps in float32 in a float64 model
    (Qwen-VL's vision rotary embedding, the processor's float32 pixels), and the two paths batch them differently.
    """
    loaded = float64_copy(tiny_model(name))
    model, adapter = loaded.model, loaded.adapter
    batch = collate_pairs(ChatEncoder(loaded), EXAMPLES)
    with counting_forwards(loaded) as counts:
        shared = pair_logprobs(model, batch, share_image=True)
        (shared.accepted.sum() - shared.rejected.sum()).backward()
        grads_shared = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        separate = pair_logprobs(model, batch, share_image=False)
        (separate.accepted.sum() - separate.rejected.sum()).backward()
    one, both = counts.vision_pixels
    assert both == 2 * one  # B images vs 2B
    torch.testing.assert_close(shared.accepted, separate.accepted, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(shared.rejected, separate.rejected, rtol=1e-10, atol=1e-10)
    counts = (batch["labels"][:, 1:] != -100).sum(-1)
    assert shared.accepted_tokens.tolist() == counts[:3].tolist() and shared.rejected_tokens.tolist() == counts[3:].tolist()
    grads = dict(model.named_parameters())
    assert grads_shared.keys() == {n for n, p in grads.items() if p.grad is not None}
    for name, grad in grads_shared.items():
        torch.testing.assert_close(grad, grads[name].grad, rtol=1e-5, atol=1e-8)
    assert {adapter.component_of(n) for n, g in grads_shared.items() if g.abs().sum() > 0} == {
        "vision_encoder", "merger", "language_model"}

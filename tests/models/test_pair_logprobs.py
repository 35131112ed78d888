"""Pair batches and the shared-image forward: same log-probs and gradients as encoding each sequence's image."""

from __future__ import annotations

import copy

import torch
from PIL import Image

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


def test_shared_image_forward_matches_separate_encoding(tiny_loaded) -> None:
    model = copy.deepcopy(tiny_loaded.model).train()
    batch = collate_pairs(ChatEncoder(tiny_loaded), EXAMPLES)
    calls = []
    hook = model.model.visual.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    shared = pair_logprobs(model, batch, share_image=True)
    (shared.accepted.sum() - shared.rejected.sum()).backward()
    grads_shared = {n: p.grad.clone() for n, p in model.named_parameters() if "visual" in n}
    model.zero_grad()
    separate = pair_logprobs(model, batch, share_image=False)
    (separate.accepted.sum() - separate.rejected.sum()).backward()
    hook.remove()
    assert calls == [batch["pixel_values"].shape[0], 2 * batch["pixel_values"].shape[0]]  # B images vs 2B
    torch.testing.assert_close(shared.accepted, separate.accepted, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared.rejected, separate.rejected, rtol=1e-5, atol=1e-5)
    counts = (batch["labels"][:, 1:] != -100).sum(-1)
    assert shared.accepted_tokens.tolist() == counts[:3].tolist() and shared.rejected_tokens.tolist() == counts[3:].tolist()
    for name, grad in grads_shared.items():
        torch.testing.assert_close(grad, dict(model.named_parameters())[name].grad, rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in grads_shared.values())

"""The hand-written SFT loss against the model's own ``labels=`` loss, and where gradients flow."""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

from cme_vlm.models.encoding import ChatEncoder
from cme_vlm.models.logprobs import (
    answer_logprobs,
    count_targets,
    next_token_targets,
    sequence_logprobs,
    token_logprobs,
)
from cme_vlm.training.losses import sft_loss

IMAGES = [Image.new("RGB", (112, 112), (0, 200, 0)), Image.new("RGB", (168, 112), (200, 40, 40))]
PROMPTS = ["Which structure is highlighted?", "Name the structure marked by the overlay."]
ANSWERS = ["The inferior mesenteric vein.", "This is angel's hair, loose areolar tissue in the plane."]


@pytest.fixture
def model_and_batch(tiny_loaded):
    loaded = copy.copy(tiny_loaded)
    loaded.model = copy.deepcopy(tiny_loaded.model).train()
    return loaded.model, ChatEncoder(loaded, 512).encode(IMAGES, PROMPTS, ANSWERS)


def test_hand_loss_equals_model_loss_and_gradients(model_and_batch):
    model, batch = model_and_batch
    n = count_targets(batch["labels"])
    ours = sft_loss(answer_logprobs(model, batch, chunk_size=7).token_logp, n)
    ours.backward()
    grad_ours = model.lm_head.weight.grad.clone()
    model.zero_grad()
    inputs = {k: v for k, v in batch.items() if k != "ids"}
    theirs = model(**inputs).loss
    theirs.backward()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_ours, model.lm_head.weight.grad, rtol=1e-4, atol=1e-7)


def test_only_answer_predicting_positions_get_gradient(model_and_batch):
    model, batch = model_and_batch
    captured = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["hidden"] = output

    handle = model.model.language_model.norm.register_forward_hook(keep)
    sft_loss(answer_logprobs(model, batch).token_logp, count_targets(batch["labels"])).backward()
    handle.remove()
    grad_norm = captured["hidden"].grad.norm(dim=-1)  # [B, T]
    positions, _ = next_token_targets(batch["labels"])
    assert (grad_norm[~positions] == 0).all()  # prompt, image and padding positions
    assert (grad_norm[positions] > 0).all()
    image_id = model.config.image_token_id
    assert (batch["input_ids"] == image_id).any() and not positions[batch["input_ids"] == image_id].any()


def test_token_logprobs_is_log_softmax_and_sums_per_sequence():
    torch.manual_seed(0)
    hidden, weight = torch.randn(5, 4, dtype=torch.float64), torch.randn(9, 4, dtype=torch.float64)
    targets = torch.tensor([1, 8, 0, 3, 3])
    expected = torch.log_softmax(hidden @ weight.T, -1)[torch.arange(5), targets]
    torch.testing.assert_close(token_logprobs(hidden, weight, targets, chunk_size=2), expected)
    positions = torch.tensor([[False, True, True, False], [True, True, True, False]])
    torch.testing.assert_close(sequence_logprobs(expected, positions), torch.stack([expected[:2].sum(), expected[2:].sum()]))

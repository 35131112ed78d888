"""Answer log-probs of every family equal a direct transcription: forward -> log-softmax -> gather at the labels."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from tiny_families import TINY_FAMILIES, float64_copy, tiny_model

from cme_vlm.models.adapters import IGNORE_INDEX
from cme_vlm.models.encoding import ChatEncoder
from cme_vlm.models.logprobs import answer_logprobs, sequence_logprobs

IMAGES = [Image.new("RGB", (112, 112), (0, 200, 0)), Image.new("RGB", (160, 96), (200, 40, 40))]
PROMPTS = ["Which structure?", "Name the structure marked by the overlay, please."]
ANSWERS = ["Angel's hair: loose areolar tissue in the plane of right-sided CME.", "The IMV."]


def direct_logprobs(model: torch.nn.Module, batch: dict) -> list[list[float]]:
    """``log softmax(logits[b, t])[labels[b, t + 1]]`` for every labelled ``t + 1``, from the model's own logits."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**inputs).logits  # [B, T, V]
    logp = logits.log_softmax(-1)
    labels = batch["labels"]
    return [[float(logp[b, t, labels[b, t + 1]]) for t in range(labels.shape[1] - 1) if labels[b, t + 1] != IGNORE_INDEX]
            for b in range(labels.shape[0])]


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_answer_logprobs_equal_the_direct_computation(name: str) -> None:
    loaded = float64_copy(tiny_model(name), train=False)
    batch = ChatEncoder(loaded, 512).encode(IMAGES, PROMPTS, ANSWERS)
    assert (batch["attention_mask"] == 0).any()  # answers of different lengths: right padding in the batch
    with torch.no_grad():
        ours = answer_logprobs(loaded.model, batch, chunk_size=7)
    expected = direct_logprobs(loaded.model, batch)
    assert ours.token_logp.dtype == torch.float64
    torch.testing.assert_close(ours.token_logp, torch.tensor(sum(expected, []), dtype=torch.float64),
                               rtol=1e-10, atol=1e-10)
    sums = sequence_logprobs(ours.token_logp, ours.positions)
    torch.testing.assert_close(sums, torch.tensor([sum(e) for e in expected], dtype=torch.float64), rtol=1e-10, atol=1e-10)
    answer = loaded.tokenizer.decode(batch["labels"][1][batch["labels"][1] != IGNORE_INDEX])
    assert answer.strip() == ANSWERS[1] + loaded.adapter.end_token  # the answer through the end of its turn

"""The collator learns only the answer and its end token, across images of different sizes."""

from __future__ import annotations

import pytest
from PIL import Image

from cme_vlm.errors import DataError
from cme_vlm.models.encoding import ChatEncoder, SFTCollator

RECORDS = [
    {"id": "a1", "overlay": Image.new("RGB", (112, 112), (0, 200, 0)), "prompt": "Which structure?", "answer": "The pancreas."},
    {"id": "b2", "overlay": Image.new("RGB", (224, 112), (9, 9, 9)), "prompt": "Name the highlighted structure, please.",
     "answer": "The duodenum, exposed in right-sided CME."},
]


def test_labels_cover_exactly_the_answer_and_end_token(tiny_loaded):
    batch = SFTCollator(ChatEncoder(tiny_loaded, 512))(RECORDS)
    tok = tiny_loaded.tokenizer
    assert batch["ids"] == ["a1", "b2"]
    assert batch["image_grid_thw"].shape == (2, 3)
    for row, record in enumerate(RECORDS):
        learned = batch["labels"][row][batch["labels"][row] != -100]
        assert tok.decode(learned) == record["answer"] + "<|im_end|>"
        n = int(batch["attention_mask"][row].sum())
        assert (batch["input_ids"][row][n - len(learned):n] == learned).all()  # the answer closes the sequence
        assert (batch["labels"][row][n:] == -100).all()
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()  # different lengths, right-padded


def test_long_answers_are_cut_and_long_prompts_refused(tiny_loaded):
    full = ChatEncoder(tiny_loaded, 512).encode([RECORDS[1]["overlay"]], ["Q?"], [RECORDS[1]["answer"]])
    short_len = full["input_ids"].shape[1] - 3
    cut = ChatEncoder(tiny_loaded, short_len).encode([RECORDS[1]["overlay"]], ["Q?"], [RECORDS[1]["answer"]])
    assert cut["input_ids"].shape[1] == short_len
    with pytest.raises(DataError, match="max_length"):
        ChatEncoder(tiny_loaded, 8).encode([RECORDS[1]["overlay"]], ["Q?"], ["x"])

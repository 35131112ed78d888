"""Packed (padding-free) batches give the padded batches' answer log-probs, token counts and gradients."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from itertools import pairwise

import pytest
import torch
from forward_counts import counting_forwards
from PIL import Image
from tiny_families import TINY_FAMILIES, float64_copy, refused, tiny_model
from torch.overrides import TorchFunctionMode
from transformers.masking_utils import find_packed_sequence_indices
from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

from cme_vlm.config import load_config
from cme_vlm.data.preference_records import preference_dataset, preference_row
from cme_vlm.errors import ConfigError
from cme_vlm.families import Capability
from cme_vlm.models.encoding import ChatEncoder, PairCollator, SFTCollator, collate_pairs
from cme_vlm.models.loading import LoadedModel, load_model
from cme_vlm.models.logprobs import answer_logprobs, count_targets, pair_logprobs, sequence_logprobs
from cme_vlm.models.packing import pack
from cme_vlm.schema import DPOConfig, SFTConfig
from cme_vlm.training.datamodules import PreferenceDataModule, SFTDataModule

# three image shapes (three grids) and answers of different lengths: the padded batch has padding
IMAGES = [Image.new("RGB", (112, 112), (0, 200, 0)), Image.new("RGB", (168, 112), (200, 40, 40)),
          Image.new("RGB", (112, 168), (40, 40, 200))]
PROMPTS = ["Which structure?", "Name the structure marked by the overlay, please.", "What is it?"]
ANSWERS = ["The pancreas.", "Angel's hair: loose areolar tissue in the plane of right-sided CME.", "The IMV."]
RECORDS = [{"id": f"r{i}", "overlay": im, "prompt": p, "answer": a} for i, (im, p, a) in
           enumerate(zip(IMAGES, PROMPTS, ANSWERS))]
EXAMPLES = [{"id": f"p{i}", "overlay": IMAGES[i], "prompt": PROMPTS[i], "accepted": ANSWERS[i],
             "rejected": ANSWERS[(i + 1) % 3], "ref_logp_accepted": -2.0} for i in range(3)]
TIGHT = {"rtol": 1e-10, "atol": 1e-10}
# transformers' eager attention takes its softmax in float32 even for a float64 model
TOLERANCE = {"sdpa": TIGHT, "eager": {"rtol": 1e-6, "atol": 1e-9}}
PACKABLE = [name for name in TINY_FAMILIES if not refused(name, Capability.padding_free)]


def gradients(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_gradients(
    loaded: LoadedModel, packed: dict[str, torch.Tensor], padded: dict[str, torch.Tensor],
    tolerance: dict[str, float] = TIGHT,
) -> None:
    assert packed.keys() == padded.keys()
    for name, grad in padded.items():
        torch.testing.assert_close(packed[name], grad, **tolerance)
    reached = {loaded.adapter.component_of(n) for n, g in padded.items() if g.abs().sum() > 0}
    assert reached == {"vision_encoder", "merger", "language_model"}  # the images matter


def test_pack_lays_sequences_end_to_end_with_their_own_rotary_positions(tiny_loaded) -> None:
    encoder = ChatEncoder(tiny_loaded, 512)
    padded = encoder.encode(IMAGES, PROMPTS, ANSWERS)
    packed = encoder.pack(padded)
    lengths = padded["attention_mask"].sum(-1)
    assert "attention_mask" not in packed and packed["sequence_lengths"].tolist() == lengths.tolist()
    total = int(lengths.sum())
    assert packed["input_ids"].shape == (1, total) and packed["position_ids"].shape == (4, 1, total)
    assert len(set(lengths.tolist())) == 3 and len({tuple(g) for g in padded["image_grid_thw"].tolist()}) == 3

    starts = [0, *lengths.cumsum(0).tolist()]
    rope_index = tiny_loaded.model.model.get_rope_index
    for b, (start, end) in enumerate(pairwise(starts)):
        alone = encoder.encode([IMAGES[b]], [PROMPTS[b]], [ANSWERS[b]])  # the sequence in a batch of its own
        own_rope, _ = rope_index(alone["input_ids"], alone["mm_token_type_ids"], alone["image_grid_thw"])
        for key in ("input_ids", "labels", "mm_token_type_ids"):
            assert packed[key][0, start:end].tolist() == alone[key][0].tolist()
        assert packed["position_ids"][0, 0, start:end].tolist() == list(range(end - start))
        assert packed["position_ids"][1:, 0, start:end].tolist() == own_rope[:, 0].tolist()

    # what transformers reads from the text row: sdpa/eager block mask and flash-attention varlen boundaries
    text = packed["position_ids"][0]
    owner = torch.repeat_interleave(torch.arange(3), lengths)
    assert find_packed_sequence_indices(text)[0].tolist() == owner.tolist()
    (cu_seqlens, _), _ = prepare_fa_kwargs_from_position_ids(text)
    assert cu_seqlens.tolist() == starts


def test_a_sequence_first_token_is_never_learned_across_the_boundary() -> None:
    padded = {
        "input_ids": torch.tensor([[5, 6, 7], [8, 9, 0]]), "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
        "labels": torch.tensor([[-100, 6, 7], [8, 9, -100]]), "mm_token_type_ids": torch.zeros(2, 3, dtype=torch.long),
        "image_grid_thw": torch.ones(0, 3, dtype=torch.long),
    }
    packed = pack(padded, ("mm_token_type_ids",),
                  lambda ids, *args, **kwargs: (torch.zeros(3, *ids.shape, dtype=torch.long), None))
    assert packed["labels"].tolist() == [[-100, 6, 7, -100, 9]]  # 8 was predicted by nothing, now not by 7
    assert count_targets(packed["labels"]) == count_targets(padded["labels"]) == 3
    one_d = pack(padded, ("mm_token_type_ids",))
    assert one_d["position_ids"].tolist() == [[0, 1, 2, 0, 1]] and one_d["labels"].tolist() == packed["labels"].tolist()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name", PACKABLE)
def test_sft_packed_equals_padded(name: str, attn: str) -> None:
    loaded = float64_copy(tiny_model(name), attn)
    padded = SFTCollator(ChatEncoder(loaded, 512))(RECORDS)
    packed = SFTCollator(ChatEncoder(loaded, 512), padding_free=True)(RECORDS)
    assert (padded["attention_mask"] == 0).sum() > 0 and packed["ids"] == padded["ids"]

    ours = answer_logprobs(loaded.model, packed, chunk_size=5)
    theirs = answer_logprobs(loaded.model, padded, chunk_size=5)
    assert ours.token_logp.dtype == torch.float64
    torch.testing.assert_close(ours.token_logp, theirs.token_logp, **TOLERANCE[attn])
    torch.testing.assert_close(sequence_logprobs(ours.token_logp, ours.positions),
                               sequence_logprobs(theirs.token_logp, theirs.positions), **TOLERANCE[attn])
    assert ours.positions.sum(-1).tolist() == theirs.positions.sum(-1).tolist()
    assert count_targets(packed["labels"]) == count_targets(padded["labels"]) == ours.token_logp.numel()

    n = count_targets(padded["labels"])
    packed_grads = gradients(loaded.model, -ours.token_logp.sum() / n)
    assert_same_gradients(loaded, packed_grads, gradients(loaded.model, -theirs.token_logp.sum() / n), TOLERANCE[attn])


@pytest.mark.parametrize("name", PACKABLE)
def test_pair_batches_packed_equal_padded_and_share_each_image(name: str) -> None:
    loaded = float64_copy(tiny_model(name))
    encoder = ChatEncoder(loaded, 512)
    padded = collate_pairs(encoder, EXAMPLES)
    packed = PairCollator(encoder, padding_free=True)(EXAMPLES)
    assert packed["ids"] == ["p0", "p1", "p2"] and packed["sequence_lengths"].shape == (6,)
    for key in (*loaded.adapter.image_fields(padded), "ref_logp_accepted"):
        torch.testing.assert_close(packed[key], padded[key], equal_nan=True)

    with counting_forwards(loaded) as counts:
        ours, theirs = pair_logprobs(loaded.model, packed), pair_logprobs(loaded.model, padded)
    assert len(counts.vision_pixels) == 2 and len(set(counts.vision_pixels)) == 1  # B images once, in both layouts
    for a, b in zip((ours.accepted, ours.rejected), (theirs.accepted, theirs.rejected)):
        torch.testing.assert_close(a, b, **TIGHT)
    assert ours.accepted_tokens.tolist() == theirs.accepted_tokens.tolist()
    assert ours.rejected_tokens.tolist() == theirs.rejected_tokens.tolist()
    assert ours.accepted_tokens.tolist() != ours.rejected_tokens.tolist()

    def margin(logps):  # a DPO-like objective: both halves and the shared image features get gradient
        return (logps.rejected - logps.accepted).sum()

    assert_same_gradients(loaded, gradients(loaded.model, margin(ours)), gradients(loaded.model, margin(theirs)))


def test_families_whose_attention_mixes_packed_sequences_refuse_packing_at_config_time() -> None:
    assert set(TINY_FAMILIES) - set(PACKABLE) == {"tiny_qwen3_5", "tiny_gemma3"}
    with pytest.raises(ConfigError, match=r"dpo.padding_free=true: model family qwen3_5 cannot do this: its Gated"):
        load_config(None, ["model=tiny_qwen3_5", "dpo.padding_free=true"])
    with pytest.raises(ConfigError, match=r"sft.padding_free=true: model family gemma3 cannot do this: in its sliding"):
        load_config(None, ["model=tiny_gemma3", "sft.padding_free=true"])
    load_config(None, ["model=tiny_internvl", "dpo.padding_free=true", "sft.padding_free=true"])  # allowed


def test_gemma3_packing_is_refused_for_the_reason_given() -> None:
    """Its global-attention layers alone would pack exactly; one sliding-window layer breaks it (the refusal's reason)."""
    name = "tiny_gemma3"
    cfg = load_config(None, [f"model={name}"])
    results = {}
    for layers in (["full_attention", "full_attention"], ["sliding_attention", "full_attention"]):
        text = {**cfg.model.architecture["text_config"], "layer_types": layers}
        model_cfg = replace(cfg.model, architecture={**cfg.model.architecture, "text_config": text})
        loaded = float64_copy(load_model(replace(cfg, model=model_cfg)))
        packed = answer_logprobs(loaded.model, SFTCollator(ChatEncoder(loaded, 512), padding_free=True)(RECORDS))
        padded = answer_logprobs(loaded.model, SFTCollator(ChatEncoder(loaded, 512))(RECORDS))
        results[layers[0]] = (packed.token_logp - padded.token_logp).abs().max().item()
    assert results["full_attention"] < 1e-10 < 1e-3 < results["sliding_attention"]


class VocabularyWideResults(TorchFunctionMode):
    """Records the rows of every freshly computed tensor whose last dimension is the vocabulary."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab, self.rows = vocab, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.ndim >= 2 and out.shape[-1] == self.vocab and out._base is None:
            self.rows.append(out.numel() // self.vocab)
        return out


def test_packed_path_builds_logits_a_chunk_at_a_time(tiny_loaded) -> None:
    model = copy.deepcopy(tiny_loaded.model).train()
    packed = SFTCollator(ChatEncoder(tiny_loaded, 512), padding_free=True)(RECORDS)
    with VocabularyWideResults(model.lm_head.weight.shape[0]) as seen:
        logp = answer_logprobs(model, packed, chunk_size=4).token_logp
    assert max(seen.rows) <= 4 < logp.numel() <= sum(seen.rows)  # every position, never more than 4 rows at once


def test_data_modules_pack_when_configured(tiny_loaded, answered_records) -> None:
    encoder = ChatEncoder(tiny_loaded, 512)
    sft = SFTDataModule(answered_records(n_test=0), encoder, SFTConfig(batch_size=2, padding_free=True))
    sft.setup()
    batch = next(iter(sft.train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and batch["sequence_lengths"].shape == (2,)

    rows = [preference_row({"id": f"r{i}", "structure": "duodenum", "side": "right", "phase": "p", "split": "train",
                            "prompt": PROMPTS[i], "overlay": IMAGES[i]}, ANSWERS[i], "Mesentery.", judge="rubric")
            for i in range(2)]
    dpo = PreferenceDataModule(preference_dataset(rows), encoder, DPOConfig(batch_size=2, padding_free=True))
    batch = next(iter(dpo.train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and batch["sequence_lengths"].shape == (4,)
    assert not SFTConfig().padding_free and not DPOConfig().padding_free  # padded unless asked


@pytest.mark.slow
def test_sft_stage_trains_alike_on_packed_batches(tiny_cfg, answered_records, tmp_path) -> None:
    from cme_vlm.data.records import save_dataset
    from cme_vlm.training.sft_stage import train_sft

    records = save_dataset(answered_records(n_test=0, n_val=2), tmp_path / "records")
    metrics = {}
    for padding_free in (False, True):
        sft = replace(tiny_cfg.sft, batch_size=2, max_steps=2, augment=replace(tiny_cfg.sft.augment, enabled=False),
                      padding_free=padding_free)
        cfg = replace(tiny_cfg, sft=sft, wandb=replace(tiny_cfg.wandb, mode="disabled"))
        out = tmp_path / f"padding_free={padding_free}"
        train_sft(cfg, records, out)
        metrics[padding_free] = json.loads((out / "metrics.json").read_text())
    assert metrics[True]["steps"] == metrics[False]["steps"] == 2
    for key in ("train_loss", "val_loss"):
        torch.testing.assert_close(torch.tensor(metrics[True][key]), torch.tensor(metrics[False][key]))

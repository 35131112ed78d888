"""DPOModule: precomputed reference log-probs equal an in-memory reference, which then is not held; windows weigh pairs."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from PIL import Image

from cme_vlm.data.preference_records import preference_dataset, preference_row
from cme_vlm.errors import ConfigError, DataError
from cme_vlm.models.encoding import ChatEncoder, collate_pairs
from cme_vlm.preference.reference import precompute_reference
from cme_vlm.schema import DPOConfig
from cme_vlm.training.dpo_module import DPOModule, pair_metrics
from cme_vlm.training.reference import (
    AdapterDisabledReference,
    InMemoryReference,
    PrecomputedReference,
)


def _pairs(n: int = 4):
    rows = []
    for i in range(n):
        record = {"id": f"r{i}", "structure": "duodenum", "side": "right", "phase": "p", "split": "train",
                  "prompt": "What is highlighted?", "overlay": Image.new("RGB", (112, 112), (30 * i, 120, 80))}
        rows.append(preference_row(record, f"The duodenum, exposed in right-sided CME {i}.", "Mesentery.",
                                   judge="rubric"))
    return preference_dataset(rows)


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_precomputed_reference_equals_in_memory_and_holds_no_model(tiny_loaded) -> None:
    pairs = precompute_reference(tiny_loaded, _pairs(), batch_size=3, max_length=512)
    assert all(math.isfinite(v) for v in [*pairs["ref_logp_accepted"], *pairs["ref_logp_rejected"]])
    batch = collate_pairs(ChatEncoder(tiny_loaded, 512), [pairs[i] for i in range(len(pairs))])
    live = InMemoryReference(copy.deepcopy(tiny_loaded.model))
    stored = PrecomputedReference().logps(batch)
    for a, b in zip(stored, live.logps(batch)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)

    policy = copy.deepcopy(tiny_loaded.model)
    lean = DPOModule(policy, DPOConfig(), PrecomputedReference(), total_steps=1)
    heavy = DPOModule(copy.deepcopy(policy), DPOConfig(), live, total_steps=1)
    assert _params(lean) == _params(policy)  # no reference weights held
    assert _params(heavy) == 2 * _params(policy)
    assert not any(p.requires_grad for p in heavy.reference_model.parameters())


def test_missing_reference_logprobs_stop_training_with_a_clear_error(tiny_loaded) -> None:
    batch = collate_pairs(ChatEncoder(tiny_loaded, 512), [_pairs(1)[0]])
    with pytest.raises(DataError, match="dpo.reference=in_memory"):
        PrecomputedReference().logps(batch)
    with pytest.raises(ConfigError, match="LoRA policy"):
        AdapterDisabledReference(tiny_loaded.model)


@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_steps_raise_reward_accuracy_on_the_pairs(tiny_loaded, loss: str) -> None:
    pairs = precompute_reference(tiny_loaded, _pairs(), batch_size=4, max_length=512)
    cfg = DPOConfig(lr=3e-3, beta=0.5, loss=loss, sft_weight=0.1, warmup_ratio=0.0)
    module = DPOModule(copy.deepcopy(tiny_loaded.model).train(), cfg, PrecomputedReference(), total_steps=8)
    optimizer = module.configure_optimizers()["optimizer"]
    batch = collate_pairs(ChatEncoder(tiny_loaded, 512), [pairs[i] for i in range(len(pairs))])
    batch["ids"] = pairs["id"]
    before = pair_metrics(module, [batch])
    assert before["reward_margin"] == pytest.approx(0.0, abs=1e-3)  # policy == reference at the start
    for _ in range(6):
        out, _ = module.pair_output(batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    after = pair_metrics(module, [batch])
    assert after["reward_accuracy"] == 1.0 and after["reward_margin"] > 0 and after["loss"] < before["loss"]


def test_every_window_is_the_mean_over_its_own_pairs_even_the_short_last_one(tiny_loaded) -> None:
    """Batches of 2, 1, 2, 1 | 1 pairs with grad_accum=4: the update sees the mean over 6 pairs, then over 1."""
    import lightning as L
    from torch.utils.data import DataLoader

    pairs = precompute_reference(tiny_loaded, _pairs(7), batch_size=7, max_length=512)
    encoder = ChatEncoder(tiny_loaded, 512)
    batches = []
    for rows in ([0, 1], [2], [3, 4], [5], [6]):
        batch = collate_pairs(encoder, [pairs[i] for i in rows])
        batch["ids"] = [pairs[i]["id"] for i in rows]
        batches.append(batch)
    cfg = DPOConfig(lr=0.0, grad_accum=4, grad_clip=0.0, warmup_ratio=0.0, beta=0.5, precision="32-true")
    module = DPOModule(copy.deepcopy(tiny_loaded.model).train(), cfg, PrecomputedReference(), total_steps=2)
    head = module.model.lm_head.weight
    applied = []
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    module.configure_optimizers = _recording(module.configure_optimizers, head, applied)
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))

    def expected(window: list[dict]) -> tuple[torch.Tensor, float]:
        module.zero_grad()
        losses = torch.cat([module.pair_output(b)[0].losses for b in window])
        losses.mean().backward()
        return head.grad.clone(), float(losses.mean().detach())

    for step, window in enumerate((batches[:4], batches[4:])):
        grad, loss = expected(window)
        torch.testing.assert_close(applied[step], grad, rtol=1e-4, atol=1e-7)
        assert module.history["train_loss"][step] == [step + 1, pytest.approx(loss, rel=1e-5)]


def _recording(configure, param: torch.nn.Parameter, applied: list):
    """``configure_optimizers`` whose optimizer records ``param.grad`` as each step begins."""
    def wrapped():
        config = configure()
        config["optimizer"].register_step_pre_hook(lambda *_: applied.append(param.grad.clone()))
        return config

    return wrapped

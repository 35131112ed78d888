"""``train_sft`` end to end on a few records: export reloads with transformers, resume continues."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image

from cme_vlm.data.records import RECORD_FEATURES, save_dataset
from cme_vlm.schema import FreezingConfig, Optimizer
from cme_vlm.training.sft_stage import train_sft

COLOURS = {"pancreas": (230, 200, 120), "duodenum": (200, 120, 120), "inferior_mesenteric_vein": (70, 80, 150)}


def _records(n: int) -> Dataset:
    rows = []
    for i in range(n):
        name = list(COLOURS)[i % 3]
        image = np.full((112, 112, 3), 120, np.uint8)
        mask = np.zeros((112, 112), np.uint8)
        image[20 + i % 30 : 60 + i % 30, 30:70] = COLOURS[name]
        mask[20 + i % 30 : 60 + i % 30, 30:70] = 255
        rows.append({"id": f"r{i}", "procedure": f"p{i % 6}", "frame": f"f{i}", "structure": name, "side": "left",
                     "phase": "", "split": "train" if i % 6 < 4 else "val", "prompt": "Which structure is highlighted?",
                     "overlay": Image.fromarray(image), "mask": Image.fromarray(mask),
                     "answer": f"The {name.replace('_', ' ')}." if i != 5 else "", "provenance": "teacher",
                     "teacher_model": "t", "answered_at": ""})
    return Dataset.from_list(rows, features=RECORD_FEATURES)


@pytest.fixture(scope="module")
def answered(tmp_path_factory):
    return save_dataset(_records(18), tmp_path_factory.mktemp("answered"))


def _cfg(tiny_cfg, **sft):
    from dataclasses import replace

    train = replace(tiny_cfg.sft, batch_size=4, epochs=2, checkpoint_every_n_steps=2, augment=replace(tiny_cfg.sft.augment, enabled=True),
                    freezing=FreezingConfig(), **sft)  # the paper's: vision encoder frozen
    return replace(tiny_cfg, sft=train, wandb=replace(tiny_cfg.wandb, mode="disabled"))


@pytest.mark.slow
def test_export_reloads_with_transformers_and_gives_same_logits(tiny_cfg, answered, tmp_path):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from cme_vlm.models.encoding import ChatEncoder
    from cme_vlm.models.loading import load_model

    folder = train_sft(_cfg(tiny_cfg, max_steps=3), answered, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 3 and len(metrics["train_loss"]) == 3 and metrics["initial_val_loss"] is not None
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "checkpoints" / "last.ckpt").is_file()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder).eval()
    AutoProcessor.from_pretrained(folder)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    ours = load_model(tiny_cfg)
    ours.model.load_state_dict({k.removeprefix("model."): v for k, v in ckpt.items()})
    batch = ChatEncoder(ours, 256).encode([Image.new("RGB", (112, 112), (9, 200, 9))], ["Which?"], ["The pancreas."])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, ours.model.eval()(**inputs).logits)
    base = load_model(tiny_cfg).model
    assert torch.equal(base.model.visual.blocks[0].mlp.up_proj.weight, model.model.visual.blocks[0].mlp.up_proj.weight)
    assert not torch.equal(base.lm_head.weight, model.lm_head.weight)


def _assert_close_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _assert_close_tensors(a[k], b[k])
        elif isinstance(a[k], torch.Tensor):
            torch.testing.assert_close(a[k], b[k], msg=k)
        else:
            assert a[k] == b[k], k


@pytest.mark.slow
@pytest.mark.parametrize("stepping", [{}, {"optimizer": Optimizer.kahan_adamw, "gradient_release": True, "grad_clip": 0.0}],
                         ids=["adamw", "gradient-release"])
def test_resume_mid_epoch_ends_with_the_uninterrupted_weights_and_optimizer_state(tiny_cfg, answered, tmp_path, stepping):
    cfg = _cfg(tiny_cfg, max_steps=4, keep_checkpoints=2, **stepping)  # step 2 kept beside step 4
    train_sft(cfg, answered, tmp_path / "a")  # 3 batches an epoch: step 2 is mid-epoch
    mid = torch.load(tmp_path / "a" / "checkpoints" / "step=2.ckpt", weights_only=False)
    assert mid["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] % 3 != 0
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "a" / "checkpoints" / "step=2.ckpt", tmp_path / "b" / "checkpoints" / "last.ckpt")
    train_sft(cfg, answered, tmp_path / "b")
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=False)
    assert b["global_step"] == a["global_step"] == 4
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["last.ckpt", "step=4.ckpt"]  # no -v1
    assert b["lr_schedulers"][0]["last_epoch"] == a["lr_schedulers"][0]["last_epoch"] == 4
    state_a, state_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert all(float(state_b[k]["step"]) == float(state_a[k]["step"]) == 4 for k in state_a)
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    # the whole stage's record, each step once: steps 1-2 from the checkpoint's history, 3-4 trained after it
    assert [s for s, _ in metrics["train_loss"]] == [1, 2, 3, 4]
    assert metrics["train_loss"] == json.loads((tmp_path / "a" / "metrics.json").read_text())["train_loss"]
    _assert_close_tensors(b["state_dict"], a["state_dict"])
    _assert_close_tensors(b["optimizer_states"][0], a["optimizer_states"][0])
    assert b["lr_schedulers"][0] == a["lr_schedulers"][0]

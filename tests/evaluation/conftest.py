"""A small answered instruction dataset with a test split, written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from PIL import Image

from cme_vlm.data.records import RECORD_FEATURES, record_id, save_dataset

CASES = (
    ("inferior_mesenteric_vein", "left", "The highlighted structure is the inferior mesenteric vein, in the lower "
     "left of the frame. In left-sided CME it is ligated high below the inferior border of the pancreas."),
    ("duodenum", "right", "The highlighted structure is the duodenum, in the centre of the frame. Exposing it "
     "confirms the correct plane in right-sided CME; its thin wall is easily injured by thermal spread."),
    ("pancreas", "left", "The highlighted structure is the pancreas, in the upper right. Its lower border marks "
     "the level of high IMV ligation in left-sided CME, and it can be mistaken for fat."),
    ("angels_hair", "right", "The highlighted structure is angel's hair, loose areolar tissue between the layers. "
     "Its appearance under traction confirms the dissection is in the correct embryological plane."),
)


def answered_records(n_test: int = 4, size: int = 112) -> Dataset:
    """``n_test`` test records cycling through ``CASES`` plus two train records; overlays of ``size`` pixels."""
    rows = []
    for i in range(n_test + 2):
        structure, side, answer = CASES[i % len(CASES)]
        rng = np.random.default_rng(i)
        frame = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), bool)
        mask[size // 2 : size - 8, 8 : size // 3 + i] = True
        frame[mask] = (0.6 * frame[mask] + 0.4 * np.array([0, 255, 0])).astype(np.uint8)
        procedure, frame_id = f"p{i}", f"p{i}/f{i}.png"
        rows.append({
            "id": record_id(procedure, frame_id, structure), "procedure": procedure, "frame": frame_id,
            "structure": structure, "side": side, "phase": "mesocolic dissection",
            "split": "test" if i < n_test else "train",
            "prompt": "Identify the highlighted anatomical structure and explain its significance for CME.",
            "overlay": Image.fromarray(frame), "mask": Image.fromarray(mask.astype(np.uint8) * 255, mode="L"),
            "answer": answer, "provenance": "teacher", "teacher_model": "offline", "answered_at": "",
        })
    return Dataset.from_list(rows, features=RECORD_FEATURES)


@pytest.fixture
def answered_dir(tmp_path: Path) -> Path:
    """A teacher-stage folder holding a small answered dataset (4 test records)."""
    save_dataset(answered_records(), tmp_path / "02-teacher")
    return tmp_path / "02-teacher"


@pytest.fixture(scope="session")
def evaluated(tiny_cfg, tmp_path_factory):
    """One `evaluate` run (tiny base + an exported, perturbed copy as SFT; no DPO) shared by the tests.

    Returns (cfg, dataset folder, sft folder, eval folder); tests that change the eval folder copy it first.
    """
    import dataclasses

    import torch

    from cme_vlm.evaluation.stage import evaluate
    from cme_vlm.models.export import export_model
    from cme_vlm.models.loading import load_model

    root = tmp_path_factory.mktemp("evaluated")
    dataset = root / "02-teacher"
    save_dataset(answered_records(), dataset)
    loaded = load_model(dataclasses.replace(tiny_cfg, seed=1))
    with torch.no_grad():
        loaded.model.lm_head.weight.mul_(3.0)
    sft = export_model(loaded.model, loaded.processor, root / "03-sft" / "model")
    cfg = dataclasses.replace(tiny_cfg, eval=dataclasses.replace(tiny_cfg.eval, max_new_tokens=8, gallery_size=2))
    evaluate(cfg, dataset, sft=sft, dpo=root / "05-dpo" / "model", out=root / "06-eval")
    return cfg, dataset, sft, root / "06-eval"

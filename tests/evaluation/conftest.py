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

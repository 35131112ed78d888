"""Small instruction datasets written by the tests themselves, and a Gemini config for the fake endpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from PIL import Image

from cme_vlm.data.records import RECORD_FEATURES, record_id, save_dataset

STRUCTURES = ("inferior_mesenteric_vein", "duodenum", "preparation_plane", "angels_hair", "pancreas")
SIDES = {"inferior_mesenteric_vein": "left", "duodenum": "right"}
KEY = "test-key-not-a-secret-1234567890"


def frame_and_mask(i: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A textured RGB frame and a rectangular bool mask that differs per record."""
    rng = np.random.default_rng(i)
    frame = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), bool)
    mask[2 + i % 7 : 12 + i % 11, 3 + i % 5 : 20 + i % 9] = True
    return frame, mask


def make_records(n: int) -> Dataset:
    rows = []
    for i in range(n):
        structure = STRUCTURES[i % len(STRUCTURES)]
        procedure, frame_id = f"proc{i // 3:03d}", f"proc{i // 3:03d}/frame{i:05d}.png"
        frame, mask = frame_and_mask(i)
        overlay = frame.copy()
        overlay[mask] = (0.6 * overlay[mask] + 0.4 * np.array([0, 255, 0])).astype(np.uint8)
        rows.append({
            "id": record_id(procedure, frame_id, structure), "procedure": procedure, "frame": frame_id,
            "structure": structure, "side": SIDES.get(structure, "left" if i % 2 else "right"),
            "phase": "mesocolic dissection", "split": "train",
            "prompt": "Identify the highlighted anatomical structure and explain its significance for CME.",
            "overlay": Image.fromarray(overlay), "mask": Image.fromarray(mask.astype(np.uint8) * 255, mode="L"),
            "answer": "", "provenance": "", "teacher_model": "", "answered_at": "",
        })
    return Dataset.from_list(rows, features=RECORD_FEATURES)


@pytest.fixture
def records_dir(tmp_path: Path) -> Path:
    """A stage folder holding a 10-record instruction dataset."""
    save_dataset(make_records(10), tmp_path / "01-data")
    return tmp_path / "01-data"


@pytest.fixture
def gemini_cfg(cfg, monkeypatch):
    """The demo config switched to the Gemini backend with tiny delays; point base_url at a fake."""
    from cme_vlm.schema import TeacherBackend

    monkeypatch.setenv("CME_TEST_GEMINI_KEY", KEY)
    g = cfg.teacher.gemini
    cfg.teacher.backend = TeacherBackend.gemini
    g.api_key_env, g.timeout_s, g.max_retries = "CME_TEST_GEMINI_KEY", 1.0, 3
    g.backoff_base_s, g.backoff_max_s, g.concurrency, g.requests_per_minute = 0.01, 0.05, 2, 0
    return cfg

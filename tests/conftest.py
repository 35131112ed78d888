"""Shared fixtures: the demo config, small and fast, and a registry with a sixth structure."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from cme_vlm.config_files import REPO_ROOT

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    # each xdist worker gets its share of the cores: oversubscribed OpenMP threads slow every worker down
    share = max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(share)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(share)


@pytest.fixture
def cfg():
    from cme_vlm.config import load_config

    return load_config(None, ["data.synthetic.n_frames=24", "data.synthetic.n_procedures=6"])


URETER = """
  ureter:
    display_name: ureter
    synonyms: [left ureter]
    side: left
    annotation_count: 300
    appearance: {shape: tube, colour: [230, 220, 200], scale: 0.5}
    facts:
      - {text: It runs beneath Gerota's fascia and must stay posterior to the plane., kind: pitfall, source: test}
"""


@pytest.fixture
def sixth_structure_experiment(tmp_path: Path) -> Path:
    """A copy of the repo's configs and experiments whose registry YAML gains a ureter entry."""
    shutil.copytree(REPO_ROOT / "configs", tmp_path / "configs")
    shutil.copytree(REPO_ROOT / "experiments", tmp_path / "experiments")
    registry = tmp_path / "configs" / "anatomy" / "cme.yaml"
    registry.write_text(registry.read_text() + URETER)
    return tmp_path / "experiments" / "demo.yaml"


@pytest.fixture(scope="session")
def tiny_cfg():
    """The demo config with the ``tiny`` model (random weights seeded by ``seed``, offline tokenizer)."""
    from cme_vlm.config import load_config

    return load_config(None, ["model=tiny"])


@pytest.fixture(scope="session")
def tiny_loaded(tiny_cfg):
    """The tiny model and processor, built once per session. Tests must not change its weights."""
    from cme_vlm.models.loading import load_model

    return load_model(tiny_cfg)


@pytest.fixture(scope="session")
def built_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``01-data`` stage folder built from 24 synthetic frames of 6 procedures (demo config).

    ``cme_vlm.data.records.load_dataset(built_dataset)`` gives the instruction records (no answers);
    the synthetic tree is beside it in ``../00-frames``. Treat both as read-only.
    """
    from cme_vlm.config import load_config
    from cme_vlm.data.stage import build, synthesize

    run = tmp_path_factory.mktemp("built-run")
    cfg = load_config(None, ["data.synthetic.n_frames=24", "data.synthetic.n_procedures=6"])
    synthesize(cfg, run / "00-frames")
    build(cfg, run / "00-frames", run / "01-data")
    return run / "01-data"


ANSWERED_CASES = (
    ("inferior_mesenteric_vein", "left", "The highlighted structure is the inferior mesenteric vein, in the lower "
     "left of the frame. In left-sided CME it is ligated high below the inferior border of the pancreas."),
    ("duodenum", "right", "The highlighted structure is the duodenum, in the centre of the frame. Exposing it "
     "confirms the correct plane in right-sided CME; its thin wall is easily injured by thermal spread."),
    ("pancreas", "left", "The highlighted structure is the pancreas, in the upper right. Its lower border marks "
     "the level of high IMV ligation in left-sided CME, and it can be mistaken for fat."),
    ("angels_hair", "right", "The highlighted structure is angel's hair, loose areolar tissue between the layers. "
     "Its appearance under traction confirms the dissection is in the correct embryological plane."),
)


def _answered_records(n_test: int = 4, size: int = 112, n_val: int = 0):
    """``n_val`` val, ``n_test`` test and two train records cycling through ``ANSWERED_CASES``; ``size``-pixel overlays."""
    import numpy as np
    from datasets import Dataset
    from PIL import Image

    from cme_vlm.data.records import RECORD_FEATURES, record_id

    splits = ["val"] * n_val + ["test"] * n_test + ["train"] * 2
    rows = []
    for i, split in enumerate(splits):
        structure, side, answer = ANSWERED_CASES[i % len(ANSWERED_CASES)]
        rng = np.random.default_rng(i)
        frame = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), bool)
        mask[size // 2 : size - 8, 8 : size // 3 + i] = True
        frame[mask] = (0.6 * frame[mask] + 0.4 * np.array([0, 255, 0])).astype(np.uint8)
        procedure, frame_id = f"p{i}", f"p{i}/f{i}.png"
        rows.append({
            "id": record_id(procedure, frame_id, structure), "procedure": procedure, "frame": frame_id,
            "structure": structure, "side": side, "phase": "mesocolic dissection",
            "split": split,
            "prompt": "Identify the highlighted anatomical structure and explain its significance for CME.",
            "overlay": Image.fromarray(frame), "mask": Image.fromarray(mask.astype(np.uint8) * 255, mode="L"),
            "answer": answer, "provenance": "teacher", "teacher_model": "offline", "answered_at": "",
        })
    return Dataset.from_list(rows, features=RECORD_FEATURES)


@pytest.fixture(scope="session")
def answered_records():
    """A builder of small answered instruction datasets: ``answered_records(n_test=4, size=112, n_val=0)``."""
    return _answered_records


@pytest.fixture(scope="session")
def answered_dataset(built_dataset: Path) -> Path:
    """``built_dataset`` answered by the offline teacher: the ``02-teacher`` stage folder (read-only)."""
    from cme_vlm.config import load_config
    from cme_vlm.teacher.stage import answer

    out = built_dataset.parent / "02-teacher"
    if not (out / "dataset").is_dir():
        answer(load_config(), built_dataset / "dataset", out)
    return out

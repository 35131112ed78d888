"""Shared fixtures: the demo config, small and fast, and a registry with a sixth structure."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cme_vlm.config import REPO_ROOT

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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

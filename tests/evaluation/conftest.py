"""The evaluation tests' data: a small answered dataset with a test split, and one shared `evaluate` run."""

from __future__ import annotations

from pathlib import Path

import pytest

from cme_vlm.data.records import save_dataset


@pytest.fixture
def answered_dir(tmp_path: Path, answered_records) -> Path:
    """A teacher-stage folder holding a small answered dataset (4 test records)."""
    save_dataset(answered_records(), tmp_path / "02-teacher")
    return tmp_path / "02-teacher"


@pytest.fixture(scope="session")
def evaluated(tiny_cfg, tmp_path_factory, answered_records):
    """One `cme-vlm evaluate` run (tiny base + an exported, perturbed copy as SFT; no DPO) shared by the tests.

    Returns (cfg, dataset folder, sft folder, eval folder); tests that change the eval folder copy it first.
    """
    import dataclasses

    import torch

    from cme_vlm.cli import main
    from cme_vlm.config import load_config
    from cme_vlm.models.export import export_model
    from cme_vlm.models.loading import load_model

    root = tmp_path_factory.mktemp("evaluated")
    dataset = root / "02-teacher"
    save_dataset(answered_records(), dataset)
    loaded = load_model(dataclasses.replace(tiny_cfg, seed=1))
    with torch.no_grad():
        loaded.model.lm_head.weight.mul_(3.0)
    sft = export_model(loaded.model, loaded.processor, root / "03-sft" / "model")
    overrides = ["model=tiny", "eval.max_new_tokens=8", "eval.gallery_size=2"]
    paths = ["--dataset", str(dataset), "--sft", str(sft), "--dpo", str(root / "05-dpo" / "model"),
             "--out", str(root / "06-eval")]
    assert main(["evaluate", *paths, *overrides]) == 0
    return load_config(None, overrides), dataset, sft, root / "06-eval"

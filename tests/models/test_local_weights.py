"""The dry-run's list of models loaded from this machine: each found where it is, or the key to set."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest

from cme_vlm.config import load_config
from cme_vlm.models.local_weights import local_models


def _cached(cache: Path, repo_id: str) -> Path:
    """A model as the Hugging Face cache holds it after a download (``models--org--name/snapshots/<rev>``)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    return snapshot


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_the_paper_needs_its_base_weights_and_roberta_large_each_named_by_its_key(hub_cache: Path):
    base, bertscore = local_models(load_config("experiments/paper.yaml"))
    assert (base.key, base.missing) == ("model.path", True)
    assert "Qwen/Qwen2.5-VL-7B-Instruct is neither a local folder nor in the Hugging Face cache" in base.status
    assert (bertscore.key, bertscore.missing) == ("eval.bertscore.path", True)
    assert "roberta-large is not in the Hugging Face cache" in bertscore.status

    snapshot = _cached(hub_cache, "roberta-large")
    _, bertscore = local_models(load_config("experiments/paper.yaml"))
    assert not bertscore.missing and str(snapshot) in bertscore.status


def test_a_local_folder_or_random_weights_need_nothing_more(tmp_path: Path, hub_cache: Path):
    weights = tmp_path / "Qwen2.5-VL-7B-Instruct"
    weights.mkdir()
    (weights / "config.json").write_text("{}")
    base, bertscore = local_models(load_config("experiments/paper.yaml", [f"model.path={weights}", "eval=offline"]))
    assert not base.missing and str(weights) in base.status and not bertscore.missing
    base, _ = local_models(load_config(None))
    assert not base.missing and "random weights" in base.status
    base, _ = local_models(load_config(None, [f"model.path={tmp_path / 'nowhere'}"]))
    assert base.missing and "config.json" in base.status

"""One rule places every model a stage runs without training it on ``generation.device``: candidate sampling and the
reference log-probs (the preference stage), the evaluation's answers, and ``explain``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cme_vlm.data.records import save_dataset
from cme_vlm.errors import ConfigError
from cme_vlm.models.export import export_model
from cme_vlm.models.placement import inference_device, load_for_inference


class Placed(Exception):
    """Raised by a stand-in for the first call that runs the model, carrying the device the model was placed on."""


def _on(cfg, device: str):
    return replace(cfg, generation=replace(cfg.generation, device=device))


def _stop_at(monkeypatch, target: str) -> None:
    """Replace ``target`` (a function that receives the loaded model first) by one that reports where the model is."""
    def report(loaded, *args, **kwargs):
        raise Placed({t.device.type for t in (*loaded.model.parameters(), *loaded.model.buffers())})

    monkeypatch.setattr(target, report)


@pytest.fixture(scope="module")
def exported(tiny_loaded, tmp_path_factory) -> Path:
    return export_model(tiny_loaded.model, tiny_loaded.processor, tmp_path_factory.mktemp("placement") / "model")


def test_auto_is_the_first_gpu_when_one_is_visible_else_the_cpu(tiny_cfg, monkeypatch):
    assert inference_device(tiny_cfg.generation) == torch.device("cpu")
    with pytest.raises(ConfigError, match="generation.device=cuda.*no CUDA GPU"):
        inference_device(replace(tiny_cfg.generation, device="cuda"))
    with pytest.raises(ConfigError, match="generation.device='gpu0' is not a torch device"):
        inference_device(replace(tiny_cfg.generation, device="gpu0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert inference_device(tiny_cfg.generation) == torch.device("cuda")


def test_a_loaded_model_sits_on_the_configured_device(tiny_cfg, exported):
    for path in (None, exported):  # built from the architecture, or from a folder
        model = load_for_inference(_on(tiny_cfg, "meta"), path).model
        assert {t.device.type for t in (*model.parameters(), *model.buffers())} == {"meta"}


def test_explain_runs_its_model_on_the_configured_device(tiny_cfg, exported, tmp_path, monkeypatch):
    from cme_vlm.inference import explain

    frame, mask = tmp_path / "f.png", tmp_path / "m.png"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(frame)
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 7 == 0).astype(np.uint8) * 255).save(mask)
    _stop_at(monkeypatch, "cme_vlm.inference.generate")
    with pytest.raises(Placed, match="meta"):
        explain(_on(tiny_cfg, "meta"), exported, frame, mask)


def test_the_evaluation_answers_with_its_model_on_the_configured_device(tiny_cfg, answered_records, tmp_path,
                                                                        monkeypatch):
    from cme_vlm.evaluation.generation import ModelSpec, generate_answers

    _stop_at(monkeypatch, "cme_vlm.models.generation.generate")
    with pytest.raises(Placed, match="meta"):
        generate_answers(_on(tiny_cfg, "meta"), ModelSpec("base"), answered_records(n_test=1), tmp_path)


def test_the_preference_stage_samples_and_scores_references_on_the_configured_device(
        tiny_cfg, answered_records, exported, tmp_path, monkeypatch):
    """Sampling gets the model first; the reference log-probs read the same loaded model after it."""
    from cme_vlm.preference.stage import build_preferences

    _stop_at(monkeypatch, "cme_vlm.preference.stage.sample_candidates")
    dataset = save_dataset(answered_records(n_test=0, n_val=1), tmp_path / "answered")
    with pytest.raises(Placed, match="meta"):
        build_preferences(_on(tiny_cfg, "meta"), dataset, exported, tmp_path / "preference")

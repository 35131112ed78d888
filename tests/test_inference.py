"""``explain`` on the tiny models: overlay written beside, answer equal to direct generation, for every family."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from tiny_families import TINY_FAMILIES, tiny_model

from cme_vlm.cli import main
from cme_vlm.config import load_config
from cme_vlm.errors import DataError
from cme_vlm.inference import explain, overlay_for
from cme_vlm.models.export import export_model
from cme_vlm.models.generation import generate
from cme_vlm.models.loading import load_model


@pytest.fixture
def frame_and_mask(tmp_path):
    frame = np.full((96, 128, 3), 90, np.uint8)
    mask = np.zeros((96, 128), np.uint8)
    mask[20:60, 30:90] = 255
    Image.fromarray(frame).save(tmp_path / "case7.png")
    Image.fromarray(mask).save(tmp_path / "case7_mask.png")
    return tmp_path / "case7.png", tmp_path / "case7_mask.png"


def test_explain_prints_the_local_answer_and_writes_the_overlay(tiny_cfg, tiny_loaded, frame_and_mask, tmp_path, monkeypatch):
    model_dir = export_model(tiny_loaded.model, tiny_loaded.processor, tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    frame, mask = frame_and_mask
    answer = explain(tiny_cfg, model_dir, frame, mask, structure="IMV")
    overlay = np.asarray(Image.open(tmp_path / "case7_overlay.png"))
    assert overlay.shape == (tiny_cfg.data.image_size, tiny_cfg.data.image_size, 3)
    centre, corner = overlay[overlay.shape[0] // 2, overlay.shape[1] // 2], overlay[2, 2]
    assert centre[1] > corner[1] and tuple(corner) == (90, 90, 90)  # tinted green only inside the mask
    from cme_vlm.inference import _prompt_for

    image = overlay_for(tiny_cfg, frame, mask)
    expected = generate(load_model(tiny_cfg, model_dir), [image], [_prompt_for(tiny_cfg, frame, "left")],
                        max_new_tokens=tiny_cfg.eval.max_new_tokens)
    assert answer == expected[0]


def test_explain_asks_about_the_side_given_and_says_which(tiny_cfg, tiny_loaded, frame_and_mask, tmp_path, monkeypatch,
                                                          capsys):
    from cme_vlm import inference

    model_dir = export_model(tiny_loaded.model, tiny_loaded.processor, tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    asked: list[str] = []
    monkeypatch.setattr(inference, "generate", lambda loaded, images, prompts, *a: asked.extend(prompts) or ["ok"])
    frame, mask = frame_and_mask
    inference.explain(tiny_cfg, model_dir, frame, mask, side="right")
    inference.explain(tiny_cfg, model_dir, frame, mask)
    assert "right-sided CME" in asked[0] and "left-sided CME" in asked[1]
    said = " ".join(capsys.readouterr().out.split())
    assert "right-sided CME (--side)" in said and "left-sided CME (data.dsad_side" in said
    assert main(["explain", "--model", str(model_dir), "--frame", str(frame), "--mask", str(mask), "--side", "right",
                 "model=tiny", "eval.max_new_tokens=2"]) == 0
    with pytest.raises(SystemExit):
        main(["explain", "--model", str(model_dir), "--frame", str(frame), "--mask", str(mask), "--side", "up"])


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in TINY_FAMILIES if n != "tiny"])
def test_explain_answers_from_an_exported_model_of_every_family(name, frame_and_mask, tmp_path, monkeypatch):
    cfg = load_config(None, [f"model={name}", "eval.max_new_tokens=8"])
    loaded = tiny_model(name)
    model_dir = export_model(loaded.model, loaded.processor, tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    frame, mask = frame_and_mask
    answer = explain(cfg, model_dir, frame, mask)
    from cme_vlm.inference import _prompt_for

    prompt = _prompt_for(cfg, frame, cfg.data.dsad_side.value)
    assert answer == generate(loaded, [overlay_for(cfg, frame, mask)], [prompt], max_new_tokens=8)[0]


def test_explain_refuses_an_empty_mask(tiny_cfg, frame_and_mask, tmp_path):
    frame, _ = frame_and_mask
    Image.fromarray(np.zeros((96, 128), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(DataError, match="--mask"):
        overlay_for(tiny_cfg, frame, tmp_path / "empty.png")


def test_explain_reads_masks_by_the_rules_of_data_build(tiny_cfg, frame_and_mask, tmp_path):
    """A 0/1 mask (which ``data build`` accepts) tints the same pixels as its 0/255 twin; a mask of three levels is
    refused as ``data build`` refuses it."""
    frame, mask = frame_and_mask
    ones = (np.asarray(Image.open(mask)) > 0).astype(np.uint8)
    Image.fromarray(ones).save(tmp_path / "case7_mask01.png")
    assert np.array_equal(np.asarray(overlay_for(tiny_cfg, frame, tmp_path / "case7_mask01.png")),
                          np.asarray(overlay_for(tiny_cfg, frame, mask)))
    Image.fromarray(ones * 2 + (np.arange(128) % 2 == 0)[None, :].astype(np.uint8)).save(tmp_path / "levels.png")
    with pytest.raises(DataError, match=r"--mask: .*not binary"):
        overlay_for(tiny_cfg, frame, tmp_path / "levels.png")

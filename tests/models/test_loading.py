"""Loading the tiny models of every family, reproducibly and offline, and the errors for bad model folders."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny_families import TINY_FAMILIES, tiny_model

from cme_vlm.config import load_config
from cme_vlm.errors import ModelError
from cme_vlm.models.adapters import COMPONENTS
from cme_vlm.models.export import export_model
from cme_vlm.models.loading import load_model
from cme_vlm.schema import ModelFamily


def _inputs(loaded, prompt="Which structure is highlighted?", processor=None):
    processor = processor or loaded.processor
    text = processor.apply_chat_template(loaded.adapter.messages(prompt), add_generation_prompt=True, tokenize=False)
    return processor(text=[text], images=[[Image.new("RGB", (112, 112), (0, 200, 0))]], return_tensors="pt")


def test_tiny_is_reproducible_and_uses_its_tokenizer_ids(tiny_cfg, tiny_loaded):
    again = load_model(tiny_cfg)
    for (name, a), (_, b) in zip(tiny_loaded.model.named_parameters(), again.model.named_parameters()):
        assert torch.equal(a, b), name
    other = load_model(replace(tiny_cfg, seed=1))
    assert not torch.equal(other.model.lm_head.weight, again.model.lm_head.weight)
    tok, config = tiny_loaded.tokenizer, tiny_loaded.model.config
    assert config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert config.text_config.vocab_size == len(tok) < 2048
    enc = _inputs(tiny_loaded)
    n_image = int((enc["input_ids"] == config.image_token_id).sum())
    assert n_image == int(enc["image_grid_thw"].prod()) // 4  # 2x2 merge


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_every_parameter_has_a_component(name):
    loaded = tiny_model(name)
    counts = {c: 0 for c in COMPONENTS}
    for param_name, p in loaded.model.named_parameters():
        counts[loaded.adapter.component_of(param_name)] += p.numel()
    assert all(counts.values()), counts
    with torch.no_grad():
        out = loaded.model(**_inputs(loaded))
    assert out.logits.shape[-1] == len(loaded.tokenizer)
    assert tiny_model("tiny").adapter.component_of("base_model.model.model.visual.merger.mlp.0.weight") == "merger"


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_export_reloads_offline_with_transformers_alone(name, tmp_path, monkeypatch):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = tiny_model(name)
    folder = export_model(loaded.model, loaded.processor, tmp_path / "model")
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    enc = _inputs(loaded)
    for key, value in _inputs(loaded, processor=processor).items():  # the same chat format, tokens and pixels
        torch.testing.assert_close(value, enc[key], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(**enc).logits, loaded.model(**enc).logits, rtol=0, atol=0)
    reloaded = load_model(load_config(None, [f"model={name}"]), folder)
    assert type(reloaded.model) is type(loaded.model) and reloaded.adapter is loaded.adapter
    with torch.no_grad():
        torch.testing.assert_close(reloaded.model(**enc).logits, loaded.model(**enc).logits, rtol=0, atol=0)


def test_missing_local_path_says_how_to_point_at_weights(tiny_cfg, tmp_path):
    cfg = replace(tiny_cfg, model=replace(tiny_cfg.model, path=str(tmp_path / "nowhere")))
    with pytest.raises(ModelError, match="model.path"):
        load_model(cfg)


def test_unreachable_hub_id_is_one_clear_error(tiny_cfg, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = replace(tiny_cfg, model=replace(tiny_cfg.model, path="Qwen/Qwen2.5-VL-7B-Instruct"))
    with pytest.raises(ModelError, match="set model.path=/path/to/local/folder"):
        load_model(cfg)


def test_wrong_family_folder_is_refused(tiny_cfg, tiny_loaded, tmp_path):
    folder = export_model(tiny_loaded.model, tiny_loaded.processor, tmp_path / "model")
    cfg = replace(tiny_cfg, model=replace(tiny_cfg.model, family=ModelFamily.qwen2_vl))
    with pytest.raises(ModelError, match="model.family=qwen2_5_vl"):
        load_model(cfg, folder)


def test_truncated_weights_are_reported(tiny_cfg, tiny_loaded, tmp_path):
    folder = export_model(tiny_loaded.model, tiny_loaded.processor, tmp_path / "model")
    weights = next(Path(folder).glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        load_model(tiny_cfg, folder)


def test_loading_leaves_the_config_untouched():
    import copy

    from cme_vlm.config import load_config
    from cme_vlm.models.architecture import architecture_summary
    from cme_vlm.models.loading import load_model

    cfg = load_config()
    before = copy.deepcopy(cfg)
    load_model(cfg)
    architecture_summary(cfg)
    assert cfg == before

"""Loading the tiny model, reproducibly and offline, and the errors for bad model folders."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from PIL import Image

from cme_vlm.config_files import REPO_ROOT
from cme_vlm.errors import ModelError
from cme_vlm.models.adapters import COMPONENTS, adapter_for
from cme_vlm.models.export import export_model
from cme_vlm.models.loading import load_model
from cme_vlm.schema import ModelConfig, ModelFamily


def _inputs(loaded, prompt="Which structure is highlighted?"):
    text = loaded.processor.apply_chat_template(loaded.adapter.messages(prompt), add_generation_prompt=True, tokenize=False)
    return loaded.processor(text=[text], images=[Image.new("RGB", (112, 112), (0, 200, 0))], return_tensors="pt")


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


def test_every_parameter_has_a_component(tiny_loaded):
    seen = {tiny_loaded.adapter.component_of(n) for n, _ in tiny_loaded.model.named_parameters()}
    assert seen == set(COMPONENTS)
    assert tiny_loaded.adapter.component_of("base_model.model.model.visual.merger.mlp.0.weight") == "merger"


def test_export_reloads_offline_with_transformers_alone(tiny_cfg, tiny_loaded, tmp_path, monkeypatch):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = export_model(tiny_loaded.model, tiny_loaded.processor, tmp_path / "model")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    enc = _inputs(tiny_loaded)
    assert torch.equal(processor(text=[processor.apply_chat_template(tiny_loaded.adapter.messages("Which structure is highlighted?"), add_generation_prompt=True, tokenize=False)], images=[Image.new("RGB", (112, 112), (0, 200, 0))], return_tensors="pt")["input_ids"], enc["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(model(**enc).logits, tiny_loaded.model(**enc).logits)
    reloaded = load_model(tiny_cfg, folder)
    assert reloaded.model.config.image_token_id == tiny_loaded.model.config.image_token_id


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


@pytest.mark.parametrize("name", ["tiny_qwen2_vl", "tiny_qwen3_vl"])
def test_other_families_build_and_split_into_components(tiny_cfg, name):
    # The group file alone: composing "model=<name>" over tiny would merge the two architectures.
    node = yaml.safe_load((REPO_ROOT / "configs" / "model" / f"{name}.yaml").read_text())
    cfg = replace(tiny_cfg, model=OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), node)))
    loaded = load_model(cfg)
    assert loaded.adapter is adapter_for(cfg.model.family)
    counts = {c: 0 for c in COMPONENTS}
    for name, p in loaded.model.named_parameters():
        counts[loaded.adapter.component_of(name)] += p.numel()
    assert all(counts.values())
    with torch.no_grad():
        out = loaded.model(**_inputs(loaded))
    assert out.logits.shape[-1] == len(loaded.tokenizer)


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

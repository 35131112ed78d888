from __future__ import annotations

from pathlib import Path

import pytest

from cme_vlm.config_files import REPO_ROOT
from cme_vlm.config import load_config, load_saved_config, parse_overrides, save_config
from cme_vlm.errors import ConfigError
from cme_vlm.schema import ComponentMode, DataSource


def test_demo_composes_groups():
    cfg = load_config()
    assert cfg.name == "demo"
    assert cfg.model.name == "tiny"
    assert cfg.data.source is DataSource.synthetic
    assert "inferior_mesenteric_vein" in cfg.anatomy.structures
    assert cfg.defaults["sft"] == "sft_demo"


def test_both_override_forms_agree():
    a = load_config(None, ["sft.lr=0.5", "data.overlay.alpha=0.25"])
    b = load_config(None, ["--sft.lr=0.5", "--data.overlay.alpha", "0.25"])
    assert a.sft.lr == b.sft.lr == 0.5
    assert a.data.overlay.alpha == b.data.overlay.alpha == 0.25


def test_typo_is_refused_with_valid_keys():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["sft.lrr=1e-4"])
    msg = str(e.value)
    assert "sft.lrr" in msg and "did you mean 'sft.lr'" in msg and "Valid keys here" in msg


def test_wrong_type_is_refused():
    with pytest.raises(ConfigError, match="sft.batch_size"):
        load_config(None, ["sft.batch_size=many"])


def test_bad_enum_lists_choices():
    with pytest.raises(ConfigError, match="freeze"):
        load_config(None, ["sft.freezing.merger=thaw"])


def test_unknown_group_choice_lists_choices():
    with pytest.raises(ConfigError, match="tiny"):
        load_config(None, ["model=tinyy"])


def test_group_selection_by_override():
    cfg = load_config(None, ["teacher=gemini"])
    assert cfg.teacher.backend.value == "gemini"
    assert cfg.defaults["teacher"] == "gemini"


def test_contradictory_freezing_is_refused():
    with pytest.raises(ConfigError, match="nothing would train"):
        load_config(None, ["sft.freezing.vision_encoder=freeze", "sft.freezing.merger=freeze",
                           "sft.freezing.language_model=freeze"])


def test_missing_experiment_file_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_typo_in_experiment_file_names_file(tmp_path: Path):
    exp = tmp_path / "experiments" / "x.yaml"
    exp.parent.mkdir()
    (tmp_path / "configs").symlink_to(Path(__file__).resolve().parents[1] / "configs")
    exp.write_text("name: x\ndefaults: {anatomy: cme}\ndata: {overlay: {alhpa: 0.3}}\n")
    with pytest.raises(ConfigError) as e:
        load_config(exp)
    assert "x.yaml" in str(e.value) and "data.overlay.alhpa" in str(e.value) and "alpha" in str(e.value)


def test_saved_config_round_trips(tmp_path: Path):
    cfg = load_config(None, ["sft.freezing.vision_encoder=lora", "seed=7"])
    save_config(cfg, tmp_path)
    again = load_saved_config(tmp_path)
    assert again == cfg
    assert again.sft.freezing.vision_encoder is ComponentMode.lora


def test_parse_overrides_types_values():
    assert parse_overrides(["a.b=1", "--c=x", "--d", "[1, 2]"]) == [("a.b", 1), ("c", "x"), ("d", [1, 2])]
    assert parse_overrides(["--sft.lr=1e-06"]) == [("sft.lr", 1e-06)]
    with pytest.raises(ConfigError, match="no value"):
        parse_overrides(["dangling"])


def test_group_override_replaces_the_whole_section():
    tiny = load_config()
    other = load_config(None, ["model=qwen2_5_vl_7b"])
    assert other.model.name != tiny.model.name
    assert other.model.architecture["text_config"]["hidden_size"] == 3584
    assert "rope_scaling" in tiny.model.architecture["text_config"]
    qwen3 = load_config(None, ["model=tiny_qwen3_vl"]).model.architecture["text_config"]
    assert "rope_scaling" not in qwen3 and "rope_parameters" in qwen3


def test_paper_experiment_validates():
    cfg = load_config(Path(__file__).resolve().parents[1] / "experiments" / "paper.yaml")
    assert cfg.model.path == "Qwen/Qwen2.5-VL-7B-Instruct" or cfg.model.path.endswith("Qwen2.5-VL-7B-Instruct")
    assert cfg.teacher.gemini.model == "gemini-2.5-flash"
    assert cfg.sft.freezing.vision_encoder is ComponentMode.freeze and cfg.dpo.freezing.vision_encoder is ComponentMode.train
    assert cfg.eval.bertscore.model == "roberta-large" and cfg.eval.bertscore.num_layers == 17


def test_a_near_miss_key_suggests_its_full_path():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.n_frames=60"])
    assert "did you mean 'data.synthetic.n_frames'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(None, ["synthetic.n_frames=60"])
    assert "did you mean 'data.synthetic.n_frames'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.overlay.alpah=0.2"])
    assert "did you mean 'data.overlay.alpha'" in str(e.value)  # a typo among its siblings


def test_an_unknown_group_choice_is_reported_against_the_override_and_its_folder_once():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model=nope"])
    message = str(e.value)
    assert message.startswith("override 'model=nope'") and "demo.yaml" not in message
    folder = str(REPO_ROOT / "configs" / "model")
    assert message.count(folder) == 1 and message.count("tiny_qwen3_vl") == 1

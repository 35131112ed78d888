"""The stage registry: fingerprints follow exactly the keys each stage reads, and the CLI derives from it."""

from __future__ import annotations

import copy
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
from config_reads import leaf_keys

from cme_vlm.cli import COMMANDS
from cme_vlm.config import config_value, load_config
from cme_vlm.stages import STAGES, TRACKING_KEYS, downstream, fingerprints, markdown_table, stages_for


def perturbed(value: Any) -> Any:
    """A different value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, Enum):
        return next(m for m in type(value) if m is not value)
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "-changed"
    if isinstance(value, list):
        return [*value, copy.deepcopy(value[-1])] if value else ["changed"]
    if isinstance(value, dict):
        return {**value, "changed": next(iter(value.values())) if value else 1}
    raise TypeError(f"no perturbation for {type(value).__name__}")


def with_value(cfg: Any, key: str, value: Any) -> Any:
    changed = copy.deepcopy(cfg)
    *parents, leaf = key.split(".")
    setattr(config_value(changed, ".".join(parents)) if parents else changed, leaf, value)
    return changed


@pytest.mark.parametrize("experiment", ["demo", "paper"])
def test_a_changed_key_makes_exactly_its_readers_and_their_downstream_stale(experiment: str):
    cfg = load_config(Path(__file__).resolve().parents[1] / "experiments" / f"{experiment}.yaml")
    base = fingerprints(cfg)
    checked = 0
    for key in leaf_keys(cfg):
        changed_cfg = with_value(cfg, key, perturbed(config_value(cfg, key)))
        after = fingerprints(changed_cfg)
        readers = [s.name for s in stages_for(cfg) if s.reads_key(key)]
        expected = set().union(*(downstream(r, cfg) for r in readers)) if readers else set()
        common = base.keys() & after.keys()  # a key like data.source switches stages on or off
        stale = {s for s in common if base[s] != after[s]}
        assert stale == expected & common, key
        checked += bool(readers)
    assert checked > 50


def test_tracking_keys_change_no_fingerprint():
    cfg = load_config()
    for key in [k for k in leaf_keys(cfg) if k.split(".")[0] in TRACKING_KEYS]:
        assert fingerprints(with_value(cfg, key, perturbed(config_value(cfg, key)))) == fingerprints(cfg), key


def test_declared_reads_name_real_config_keys():
    cfg = load_config()
    for stage in STAGES:
        for key in stage.reads:
            config_value(cfg, key)  # AttributeError: a misspelt declaration


def test_real_data_skips_scene_drawing_and_sft_only_skips_preference_and_dpo(tmp_path: Path):
    cfg = load_config(None, ["data=dsad", "data.root=/data/dsad", "eval.models=[base, sft]"])
    assert [s.name for s in stages_for(cfg)] == ["data", "teacher", "sft", "eval"]
    data = next(s for s in STAGES if s.name == "data")
    assert data.inputs[0].path(tmp_path, cfg) == Path("/data/dsad")


def test_every_stage_is_a_command_with_its_inputs_and_folder():
    for stage in STAGES:
        command = COMMANDS[stage.command]
        assert [p.name for p in command.paths] == [*(i.name for i in stage.inputs), "out"]
        assert command.load is stage.load


def test_the_docs_show_the_registrys_stage_table():
    design = (Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text()
    assert markdown_table() in design, "regenerate the table with `python -m cme_vlm.stages` and paste it into docs/design.md"


def test_the_readme_shows_the_registrys_stage_table():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert markdown_table() in readme, "regenerate the table with `python -m cme_vlm.stages` and paste it into README.md"


def test_a_second_round_adds_its_stages_and_leaves_the_first_rounds_up_to_date():
    one, two = fingerprints(load_config()), fingerprints(load_config(None, ["preference.rounds=2"]))
    assert [s for s in two if s not in one] == ["preference-r2", "dpo-r2"]
    assert {s for s in one if one[s] != two[s]} == {"eval"}

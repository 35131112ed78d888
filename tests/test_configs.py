"""Every config builds: each option of each config group, each experiment, each ablation and each sweep's base."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cme_vlm.config import load_config
from cme_vlm.config_files import GROUP_FOLDERS, REPO_ROOT, ConfigSearch

SEARCH = ConfigSearch.for_experiment(REPO_ROOT / "experiments" / "demo.yaml")
# configs/train holds both training groups: sft_* files are `sft` options, dpo_* files `dpo` options
GROUP_OPTIONS = [
    (group, choice)
    for group, folder in GROUP_FOLDERS.items()
    for choice in SEARCH.choices(group)
    if folder != "train" or choice.startswith(f"{group}_")
]
EXPERIMENTS = sorted((REPO_ROOT / "experiments").rglob("*.yaml"))
SWEEPS = [p for p in EXPERIMENTS if p.parent.name == "sweeps"]


def test_every_group_folder_holds_options():
    assert {g for g, _ in GROUP_OPTIONS} == set(GROUP_FOLDERS)
    train_files = SEARCH.choices("sft")
    assert all(c.startswith(("sft_", "dpo_")) for c in train_files), train_files


@pytest.mark.parametrize(("group", "choice"), GROUP_OPTIONS, ids=lambda v: v)
def test_each_group_option_builds(group: str, choice: str):
    cfg = load_config(None, [f"{group}={choice}"])
    assert cfg.defaults[group] == choice


@pytest.mark.parametrize("path", [p for p in EXPERIMENTS if p not in SWEEPS], ids=lambda p: p.stem)
def test_each_experiment_and_ablation_builds(path: Path):
    cfg = load_config(path)
    assert cfg.name and set(cfg.defaults) <= set(GROUP_FOLDERS)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_each_sweep_base_builds_with_its_parameters(path: Path):
    sweep = yaml.safe_load(path.read_text())
    base = sweep["command"][sweep["command"].index("--config") + 1]
    load_config(REPO_ROOT / base, [f"{k}={_one_value(v)}" for k, v in sweep["parameters"].items()])


def _one_value(spec: dict) -> object:
    return spec["value"] if "value" in spec else spec["values"][0] if "values" in spec else spec["min"]

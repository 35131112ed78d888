"""Every ablation loads through our config loader; every sweep's generated command line parses."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import yaml
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from cme_vlm.cli import COMMANDS, _parser
from cme_vlm.config import REPO_ROOT, load_config, parse_overrides

ABLATIONS = sorted((REPO_ROOT / "experiments" / "ablations").glob("*.yaml"))
SWEEPS = sorted((REPO_ROOT / "experiments" / "sweeps").glob("*.yaml"))


def test_the_ablations_the_issue_asks_for_exist():
    names = {p.stem for p in ABLATIONS}
    assert {"no_overlay", "overlay_colour_alpha", "vision_frozen", "vision_trained", "lora", "sft_only",
            "dpo_ipo"} <= names
    assert len(SWEEPS) >= 4


@functools.cache
def _base(name: str):
    return load_config(REPO_ROOT / "experiments" / f"{name}.yaml")


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.stem)
def test_ablation_loads_and_differs_from_its_base(path: Path):
    cfg = load_config(path)
    body = yaml.safe_load(path.read_text())
    assert cfg.ablation == path.stem and cfg.base == body["base"]
    base = _base(cfg.base)
    assert cfg != base and cfg.name != base.name


def _first_value(spec: dict):
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return spec["values"][-1]
    return spec["min"]


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_command_line_parses_into_the_config(path: Path):
    sweep = yaml.safe_load(path.read_text())
    params = {k: {"value": _first_value(v)} for k, v in sweep["parameters"].items()}
    # the agent replaces ${args} with the flags wandb builds from the chosen values
    args = create_sweep_command_args({"args": params})["args"]
    command = [a for c in sweep["command"] for a in (args if c == "${args}" else [c])]
    assert command[0] == "cme-vlm"
    parsed, rest = _parser().parse_known_args(command[1:])
    assert parsed.command in COMMANDS and parsed.command[0] == "train"
    assert [k for k, _ in parse_overrides(rest)] == list(params)  # values are typed by the schema below
    cfg = load_config(REPO_ROOT / parsed.config, rest)
    for key, spec in params.items():
        node = cfg
        for part in key.split("."):
            node = node[part] if isinstance(node, dict) else getattr(node, part)
        value = getattr(node, "value", node)  # enums compare by their value
        assert (value == pytest.approx(spec["value"])) if isinstance(value, float) else (value == spec["value"]), key

"""Every ablation loads through our config loader; every sweep's command parses, runs and logs the metric it optimises.

Sweep parameters are drawn by ``sweeps``, the engine behind W&B's sweep controller, and turned into
the agent's ``--key=value`` flags by wandb's own ``create_sweep_command_args``.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest
import sweeps
import yaml
from offline_wandb import offline_runs, read_offline_run
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from cme_vlm.cli import COMMANDS, _parser, main
from cme_vlm.config import load_config, parse_overrides
from cme_vlm.config_files import GROUP_FOLDERS, REPO_ROOT
from cme_vlm.pipeline import stage_paths
from cme_vlm.stages import stages_for

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


def drawn_command(sweep: dict, seed: int = 0) -> tuple[dict[str, dict], list[str]]:
    """The first parameter set the sweep's controller draws, and the command line its agent runs with it."""
    np.random.seed(seed)  # the engine draws random and Bayesian parameters from numpy's global generator
    params = sweeps.next_run(sweep, [], validate=True).config
    # the agent replaces ${args} with the flags wandb builds from the chosen values
    args = create_sweep_command_args({"args": params})["args"]
    return params, [a for c in sweep["command"] for a in (args if c == "${args}" else [c])]


@pytest.mark.filterwarnings("ignore:Valid config keys have changed in V2")  # the sweeps engine's pydantic config
@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_command_line_parses_into_the_config(path: Path):
    params, command = drawn_command(yaml.safe_load(path.read_text()))
    assert command[0] == "cme-vlm"
    parsed, rest = _parser().parse_known_args(command[1:])
    assert parsed.command in COMMANDS and parsed.command[0] == "train"
    assert [k for k, _ in parse_overrides(rest)] == list(params)  # values are typed by the schema below
    cfg = load_config(REPO_ROOT / parsed.config, rest)
    for key, spec in params.items():
        node = cfg
        for part in key.split("."):
            node = node[part] if isinstance(node, dict) else getattr(node, part)
        if key in GROUP_FOLDERS:  # a group choice (model=tiny_gemma3) selects the group file of that name
            node = node.name
        value = getattr(node, "value", node)  # enums compare by their value
        assert (value == pytest.approx(spec["value"])) if isinstance(value, float) else (value == spec["value"]), key


# A run folder small enough for a sweep command to train from in seconds; W&B off while preparing it.
PREPARED = ["data.synthetic.n_frames=24", "data.synthetic.n_procedures=6", "teacher.max_words=60", "sft.epochs=1",
            "preference.k=2", "preference.max_new_tokens=8", "wandb.mode=disabled", "wandb.judge_subset=0"]
# Added to each sweep command: one training step (DPO: one epoch of one batch, as it validates at epoch ends),
# a two-case judged validation subset, short answers.
TINY_STEP = ["sft.max_steps=1", "dpo.epochs=1", "dpo.batch_size=64", "wandb.mode=offline", "wandb.judge_subset=2",
             "eval.max_new_tokens=6"]


@pytest.fixture(scope="module")
def prepared_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo run folder up to the preference dataset: what the SFT and DPO sweep commands read."""
    run_dir = tmp_path_factory.mktemp("sweep-run") / "demo"
    cfg = load_config(None, PREPARED)
    for stage in stages_for(cfg):
        if stage.name == "dpo":
            break
        stage.load()(cfg, **stage_paths(stage, cfg, run_dir))
    return run_dir


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Valid config keys have changed in V2")
@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_command_runs_and_logs_the_metric_it_optimises(path: Path, prepared_run: Path, tmp_path: Path):
    sweep = yaml.safe_load(path.read_text())
    _, command = drawn_command(sweep)
    out = tmp_path / "out"
    assert main([*command[1:], "--run-dir", str(prepared_run), "--out", str(out), *TINY_STEP]) == 0
    (folder,) = offline_runs(out)
    metric = sweep["metric"]["name"]
    logged = [row[metric] for row in read_offline_run(folder)["history"] if metric in row]
    assert logged and all(math.isfinite(v) for v in logged), f"{path.name} optimises '{metric}', never logged"

"""The fake-tensor memory measurement agrees with a real run of the same step; kept measurements back the dry-run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from cme_vlm.bench.explain_memory import cached_explain_memory
from cme_vlm.bench.memory import (
    SHIPPED_MEASUREMENTS,
    cached_step_memory,
    measure_step_memory,
    memory_key,
    record_step_memory,
)
from cme_vlm.config import load_config
from cme_vlm.config_files import REPO_ROOT

GIB = 2**30
# Both runs count the bytes of every live tensor storage the same way (torch's MemTracker), so they
# may differ only where the fake run reads a placeholder instead of a value: 0.1% is ample room.
MARGIN = 1e-3
PAPER_LEVERS = ["optimizer=kahan_adamw", "gradient_release=true", "grad_clip=0", "gradient_checkpointing=true",
                "checkpoint_every.language_model=2"]


DPO_LEVERS = [f"dpo.{lever}" for lever in PAPER_LEVERS]
NEW_FAMILIES = ["tiny_gemma3", "tiny_internvl", "tiny_llava_onevision", "tiny_smolvlm", "tiny_qwen3_5"]


@pytest.mark.slow
@pytest.mark.parametrize(("model", "stage", "levers"), [
    ("tiny", "sft", []), ("tiny", "dpo", DPO_LEVERS), *[(name, "dpo", DPO_LEVERS) for name in NEW_FAMILIES],
], ids=["tiny-sft-demo-settings", "tiny-dpo-paper-levers", *[f"{name}-dpo-paper-levers" for name in NEW_FAMILIES]])
def test_fake_measurement_agrees_with_real_allocation(model: str, stage: str, levers: list[str], tmp_path: Path):
    """Every family's step, from its vision tower to its decoder, runs on fake tensors exactly as for real."""
    cfg = load_config(None, [f"model={model}", *levers])
    (fake,) = record_step_memory(cfg, (stage,), folder=tmp_path)
    real = measure_step_memory(cfg, stage, fake=False)
    assert fake.peak == pytest.approx(real.peak, rel=MARGIN)
    for part, size in real.parts.items():
        assert fake.parts[part] == pytest.approx(size, rel=MARGIN, abs=4096), part
    assert fake.shape == real.shape and fake.parts["optimizer"] > 0
    assert cached_step_memory(cfg, stage, folders=(tmp_path,)) == fake


def test_the_key_follows_what_changes_memory_only():
    cfg = load_config(None, ["model=tiny"])
    key = memory_key(cfg, "sft")
    assert memory_key(replace(cfg, sft=replace(cfg.sft, lr=0.5, epochs=9, grad_accum=8)), "sft") == key
    assert memory_key(replace(cfg, sft=replace(cfg.sft, batch_size=2)), "sft") != key
    assert memory_key(replace(cfg, sft=replace(cfg.sft, gradient_release=True)), "sft") != key
    assert memory_key(replace(cfg, bench=replace(cfg.bench, answer_tokens=100)), "sft") != key
    assert memory_key(cfg, "dpo") != key


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_paper_stages_fit_70_gib_as_measured(stage: str):
    """The shipped 7B step of experiments/paper.yaml.

    After changing the paper's settings, re-record it:
    ``cme-vlm bench --memory --config experiments/paper.yaml model.path= --out cme_vlm/bench/measurements``.
    """
    cfg = load_config(REPO_ROOT / "experiments" / "paper.yaml", ["model.path="])
    measured = cached_step_memory(cfg, stage, folders=(SHIPPED_MEASUREMENTS,))
    assert measured is not None, f"no recorded {stage} step for the paper's settings in cme_vlm/bench/measurements/"
    assert measured.peak <= 70 * GIB
    assert measured.shape["sequence_length"] >= 575 and measured.provenance["method"].startswith("fake tensors")


REAL_SIZE = ["qwen2_5_vl_7b", "medgemma_4b", "internvl3_8b", "llava_onevision_7b", "smolvlm_2b", "qwen3_5_9b",
             "llava_1_5_7b"]


def experiment_of(model: str) -> tuple[Path, list[str]]:
    """The paper's pipeline on ``model``: its ablation ``experiments/ablations/base_<model>.yaml`` where one exists
    (it may lengthen the sequences the model's images need), else the paper's experiment with ``model=<model>``."""
    ablation = REPO_ROOT / "experiments" / "ablations" / f"base_{model}.yaml"
    if ablation.is_file():
        return ablation, []
    return REPO_ROOT / "experiments" / "paper.yaml", [f"model={model}"]


@pytest.mark.parametrize("model", REAL_SIZE)
def test_every_real_size_base_model_has_its_paper_memory_recorded(model: str):
    """The dry-run of the paper's pipeline on ``model`` finds a measured SFT, DPO and explain peak.

    After changing a model config or the paper's settings, re-record with ``experiment_of(model)``'s experiment:
    ``cme-vlm bench --memory --config experiments/ablations/base_<model>.yaml model.path=
    --out cme_vlm/bench/measurements``.
    """
    experiment, overrides = experiment_of(model)
    cfg = load_config(experiment, overrides)  # the hub id as model.path: the key ignores it
    for stage in ("sft", "dpo"):
        measured = cached_step_memory(cfg, stage, folders=(SHIPPED_MEASUREMENTS,))
        assert measured is not None, f"no recorded {stage} step of {model} for {experiment.name}"
        assert measured.settings["model"]["family"] == cfg.model.family.value
    assert cached_explain_memory(cfg, folders=(SHIPPED_MEASUREMENTS,)) is not None

"""All four callbacks in a short tiny training with W&B offline; the offline run file is read back.

(The folder is not called ``tests/callbacks``: on pytest's sys.path it would shadow the ``callbacks`` package.)
"""

from __future__ import annotations

import json

import pytest
from offline_wandb import read_offline_run, read_table

from cme_vlm.callbacks import build_callbacks, validation_subset
from cme_vlm.callbacks.ablation import config_diff


@pytest.mark.slow
def test_offline_run_holds_judge_scores_per_structure_metrics_and_ablation(offline_run):
    _, folder = offline_run
    run = read_offline_run(folder)
    assert {"ablation:no_overlay", "base:demo"} <= set(run["tags"])
    assert run["config"]["ablation"] == "no_overlay" and run["config"]["base_experiment"] == "demo"
    assert run["config"]["ablation_diff"]["data.overlay.enabled"] == {"base": True, "run": False}
    judged = [h for h in run["history"] if "val/judge" in h]
    assert len(judged) == 2  # one per validation epoch
    assert all(1.0 <= h["val/judge"] <= 5.0 and 0.0 <= h["val/identification"] <= 1.0 for h in judged)
    keys = set().union(*judged)
    for structure in ("inferior_mesenteric_vein", "duodenum", "pancreas"):  # the 3 validation records
        assert {f"val_structure/{structure}/judge", f"val_structure/{structure}/identification"} <= keys


@pytest.mark.slow
def test_no_image_leaves_the_machine_when_uploads_are_not_allowed(offline_run):
    _, folder = offline_run
    run = read_offline_run(folder)
    assert "image-file" not in json.dumps(run["history"])
    assert not list(folder.rglob("*.png")) and not list(folder.rglob("*.jpg"))
    table = read_table(folder, run["summary"]["val/samples"])
    assert "overlay" not in table["columns"] and "answer" in table["columns"]
    assert len(table["data"]) == 3  # every case of the validation subset


def test_build_callbacks_follows_the_config(tiny_cfg, tiny_loaded, answered_records):
    import dataclasses

    ds = answered_records(n_test=0, n_val=3)
    names = lambda cbs: [type(c).__name__ for c in cbs]  # noqa: E731
    assert names(build_callbacks(tiny_cfg, tiny_loaded, ds)) == [
        "AblationCallback", "JudgeScoreCallback", "PerStructureMetricsCallback", "SampleTableCallback"]
    only = dataclasses.replace(tiny_cfg, wandb=dataclasses.replace(tiny_cfg.wandb, callbacks=["judge"]))
    assert names(build_callbacks(only, tiny_loaded, ds)) == ["JudgeScoreCallback"]
    # without validation answers only the ablation callback is left
    assert names(build_callbacks(tiny_cfg, tiny_loaded, answered_records(n_test=2))) == ["AblationCallback"]
    assert [r["split"] for r in validation_subset(ds, 2)] == ["val", "val"]


def test_config_diff_lists_only_changed_keys(tiny_cfg):
    import dataclasses

    other = dataclasses.replace(tiny_cfg, name="x", sft=dataclasses.replace(tiny_cfg.sft, lr=1.0))
    assert config_diff(other, tiny_cfg) == {"sft.lr": {"base": tiny_cfg.sft.lr, "run": 1.0}}


def test_every_n_validations_skips_sanity_checks_and_counts_from_the_first():
    from types import SimpleNamespace

    from cme_vlm.callbacks.sampler import SampledValidationCallback

    every2 = SampledValidationCallback(None, 2)
    sanity, real = SimpleNamespace(sanity_checking=True), SimpleNamespace(sanity_checking=False)
    assert [every2.due(t) for t in (sanity, real, real, real, real, real)] == [False, True, False, True, False, True]

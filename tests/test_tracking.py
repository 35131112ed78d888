"""The plain W&B run of a stage: offline by default, the training runs' project/group/tags, no image unless allowed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import wandb
from offline_wandb import offline_runs, read_offline_run

from cme_vlm.errors import PrivacyError
from cme_vlm.tracking import flat_metrics, stage_run


@pytest.fixture
def ablation_cfg(tiny_cfg):
    return replace(tiny_cfg, name="demo-x", ablation="x", base="demo",
                   wandb=replace(tiny_cfg.wandb, mode="offline", group="g7", tags=["nightly"]))


def test_offline_stage_run_holds_the_metrics_under_the_stage_job_type(ablation_cfg, tmp_path: Path) -> None:
    with stage_run(ablation_cfg, tmp_path, "preference") as run:
        run.log({"preference/agreement": 0.625, "preference/pairs": 12})
    (folder,) = offline_runs(tmp_path)
    view = read_offline_run(folder)
    assert view["summary"]["preference/agreement"] == 0.625 and view["summary"]["preference/pairs"] == 12
    assert view["job_type"] == "preference" and view["name"] == "demo-x-preference"
    assert view["project"] == ablation_cfg.wandb.project and view["group"] == "g7"
    assert set(view["tags"]) == {"nightly", "ablation:x", "base:demo"}
    assert view["config"]["preference"]["selection"] == ablation_cfg.preference.selection.value


def test_disabled_mode_logs_nowhere(tiny_cfg, tmp_path: Path) -> None:
    with stage_run(replace(tiny_cfg, wandb=replace(tiny_cfg.wandb, mode="disabled")), tmp_path, "eval") as run:
        run.log({"eval/judge": 3.0})
    assert not (tmp_path / "wandb").exists()


def test_images_are_refused_unless_uploads_are_allowed(tiny_cfg, tmp_path: Path) -> None:
    frame = wandb.Image(np.zeros((4, 4, 3), np.uint8))
    table = wandb.Table(columns=["answer", "overlay"], data=[["duodenum", frame]])
    closed = replace(tiny_cfg, wandb=replace(tiny_cfg.wandb, mode="disabled", allow_image_upload=False))
    with stage_run(closed, tmp_path, "eval") as run:
        for value in (frame, table, {"gallery": [frame]}):
            with pytest.raises(PrivacyError, match="allow_image_upload"):
                run.log({"eval/samples": value})
        run.log({"eval/samples": wandb.Table(columns=["answer"], data=[["duodenum"]])})
    opened = replace(tiny_cfg, wandb=replace(tiny_cfg.wandb, mode="disabled", allow_image_upload=True))
    with stage_run(opened, tmp_path, "eval") as run:
        run.log({"eval/samples": table})


def test_flat_metrics_keeps_the_numbers_of_a_nested_summary() -> None:
    summary = {"pairs": 3, "agreement": {"rate": 0.5, "records": 4}, "mode": "filter", "none": None,
               "passed": {"accepted": {"names": 1.0}}}
    assert flat_metrics("p", summary) == {"p/pairs": 3, "p/agreement/rate": 0.5, "p/agreement/records": 4,
                                          "p/passed/accepted/names": 1.0}

"""`preference build` then `train dpo` on a few records with the tiny model, end to end; the selection
summary in ``summary.json`` and in the stage's offline W&B run."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from offline_wandb import offline_runs, read_offline_run
from PIL import Image

from cme_vlm.data.records import RECORD_FEATURES, load_dataset, record_id, save_dataset
from cme_vlm.models.export import export_model
from cme_vlm.preference.checks import CHECK_NAMES
from cme_vlm.preference.sampling import CandidateSet
from cme_vlm.preference.stage import _records, _select, build_preferences
from cme_vlm.schema import JudgeBackend, SamplingSetting, SelectionMode
from cme_vlm.training.dpo_stage import train_dpo

ANSWER = ("The highlighted structure is the duodenum. Exposing it confirms the correct plane in right-sided CME; "
          "its thin wall is easily injured.")


def _answered(folder: Path, n: int = 6) -> Path:
    rows = []
    for i in range(n):
        mask = np.zeros((112, 112), bool)
        mask[40:90, 10 : 40 + i] = True
        rid = record_id(f"p{i}", f"f{i}", "duodenum")
        rows.append({"id": rid, "procedure": f"p{i}", "frame": f"f{i}", "structure": "duodenum", "side": "right",
                     "phase": "mesocolic dissection", "split": ["train", "train", "val", "test"][i % 4],
                     "prompt": "What is highlighted?", "overlay": Image.new("RGB", (112, 112), (20 * i, 90, 60)),
                     "mask": Image.fromarray(mask.astype(np.uint8) * 255, mode="L"), "answer": ANSWER,
                     "provenance": "teacher", "teacher_model": "offline", "answered_at": ""})
    return save_dataset(Dataset.from_list(rows, features=RECORD_FEATURES), folder)


@pytest.mark.slow
def test_build_then_train_dpo(tiny_cfg, tiny_loaded, tmp_path: Path) -> None:
    sft = export_model(tiny_loaded.model, tiny_loaded.processor, tmp_path / "03-sft" / "model")
    settings = [SamplingSetting(temperature=1.0, seed=1), SamplingSetting(temperature=1.2, seed=2)]
    cfg = replace(
        tiny_cfg,
        preference=replace(tiny_cfg.preference, k=2, sampling=settings, max_new_tokens=8, batch_size=4),
        dpo=replace(tiny_cfg.dpo, max_steps=3, batch_size=2, lr=1e-3, checkpoint_every_n_steps=0),
        wandb=replace(tiny_cfg.wandb, mode="disabled"),
    )
    dataset = _answered(tmp_path / "02-teacher")
    target = build_preferences(replace(cfg, wandb=replace(cfg.wandb, mode="offline")), dataset, sft,
                               tmp_path / "04-preference")
    pairs = load_dataset(target)
    assert 0 < len(pairs) and set(pairs["split"]) <= {"train", "val"}  # the test split stays out
    assert all(math.isfinite(v) for v in pairs["ref_logp_accepted"])
    summary = json.loads((tmp_path / "04-preference" / "summary.json").read_text())
    assert summary["records"] == 5 and summary["pairs"] + sum(summary["kept_out"].values()) == 5
    assert len((tmp_path / "04-preference" / "candidates.jsonl").read_text().splitlines()) == 5
    assert (tmp_path / "04-preference" / "config.yaml").is_file()
    _assert_selection_logged(tmp_path / "04-preference", summary)

    model = train_dpo(cfg, target, sft, tmp_path / "05-dpo")
    metrics = json.loads((tmp_path / "05-dpo" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["before"]["train"]["reward_margin"] == pytest.approx(0, abs=1e-3)
    assert (model / "config.json").is_file()


def _assert_selection_logged(out: Path, summary: dict) -> None:
    """selection.jsonl holds who decided and the checks; summary.json and the W&B run hold the agreement."""
    log = [json.loads(line) for line in (out / "selection.jsonl").read_text().splitlines()]
    assert all(row["decided_by"] == "judge" for row in log)  # the default, judge-only selection
    assert all(set(row["checks"]["accepted"]) == set(CHECK_NAMES) for row in log if row["ok"])
    agreement = summary["judge_checks_agreement"]
    assert agreement["records"] == sum(row["judge_agrees"] is not None for row in log)
    assert agreement["agree"] == sum(row["judge_agrees"] is True for row in log)
    assert summary["selection"] == "judge" and summary["decided_by"]["judge"]["pairs"] == summary["pairs"]
    (folder,) = offline_runs(out)
    run = read_offline_run(folder)
    assert run["job_type"] == "preference" and run["state"] == "finished"
    logged = run["summary"]
    assert logged["preference/judge_checks_agreement/records"] == agreement["records"]
    assert logged.get("preference/judge_checks_agreement/rate") == agreement["rate"]
    assert logged["preference/pairs"] == summary["pairs"]


def test_checks_only_selection_builds_no_judge(tiny_cfg, tmp_path: Path) -> None:
    """With selection=checks even a Gemini judge config sends nothing: no client, journal or audit log."""
    records = _records(_answered(tmp_path / "02-teacher"))
    wrong = "The highlighted structure is the pancreas."
    candidates = {rid: CandidateSet(rid, [wrong, ANSWER], [False, False], 0) for rid in records["id"]}
    pref = replace(tiny_cfg.preference, judge=JudgeBackend.gemini, selection=SelectionMode.checks,
                   include_ground_truth=False)
    out = tmp_path / "04-preference"
    out.mkdir()
    rows = _select(replace(tiny_cfg, preference=pref), records, candidates, out)
    assert [(r["accepted"], r["rejected"], r["judge"]) for r in rows] == [(ANSWER, wrong, "checks")] * len(records)
    assert sorted(p.name for p in out.iterdir()) == ["selection.jsonl"]

"""All four callbacks in a short tiny training with W&B offline; the offline run file is read back.

(The folder is not called ``tests/callbacks``: on pytest's sys.path it would shadow the ``callbacks`` package.)
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest

from callbacks import build_callbacks, validation_subset
from callbacks.ablation import config_diff

BLOCK = 32 * 1024
HEADER = 7  # ":W&B", magic, version


def _chunks(data: bytes):
    """Payloads of the LevelDB-style log that W&B writes (records split across 32 KiB blocks)."""
    pos, pending = HEADER, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            yield chunk
        elif kind in (2, 3):
            pending += chunk
        elif kind == 4:
            yield pending + chunk
            pending = b""


def read_run(folder: Path, timeout_s: float = 30.0) -> dict:
    """Tags, config and history rows of an offline run, from its ``run-*.wandb`` file.

    W&B's service may still be writing when ``wandb.finish`` returns, so wait for the exit record.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        run = _parse(folder)
        if run["exited"] or time.monotonic() > deadline:
            assert run["exited"], f"no exit record in {folder} after {timeout_s} s"
            return run
        time.sleep(0.2)


def _parse(folder: Path) -> dict:
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = folder.glob("run-*.wandb")
    assert path.read_bytes()[:4] == b":W&B"
    out: dict = {"tags": set(), "config": {}, "history": [], "exited": False}
    for raw in _chunks(path.read_bytes()):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["tags"] |= set(record.run.tags)
        elif kind == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
        elif kind == "exit":
            out["exited"] = True
    return out


@pytest.mark.slow
def test_offline_run_holds_judge_scores_per_structure_metrics_and_ablation(offline_run):
    cfg, folder = offline_run
    run = read_run(folder)
    assert {"ablation:no_overlay", "base:demo"} <= run["tags"]
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
    run = read_run(folder)
    tables = [h for h in run["history"] if h.get("val/samples/_type") == "table-file"]
    assert tables and all(h["val/samples/ncols"] == 8 for h in tables)
    values = json.dumps(run["history"])
    assert "image-file" not in values
    assert not list(folder.rglob("*.png")) and not list(folder.rglob("*.jpg"))
    table = json.loads(next((folder / "files").rglob("*.table.json")).read_text())
    assert "overlay" not in table["columns"] and "answer" in table["columns"]


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

    from callbacks.sampler import SampledValidationCallback

    every2 = SampledValidationCallback(None, 2)
    sanity, real = SimpleNamespace(sanity_checking=True), SimpleNamespace(sanity_checking=False)
    assert [every2.due(t) for t in (sanity, real, real, real, real, real)] == [False, True, False, True, False, True]

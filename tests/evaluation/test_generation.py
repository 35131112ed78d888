"""Cached, resumable greedy generation on the test split."""

from __future__ import annotations

import dataclasses
import os

import pytest

from cme_vlm import atomic
from cme_vlm.data.records import load_dataset
from cme_vlm.errors import DataError
from cme_vlm.evaluation import generation
from cme_vlm.evaluation.generation import (
    ModelSpec,
    generate_answers,
    model_fingerprint,
    select_test_split,
)


@pytest.fixture
def eval_cfg(tiny_cfg):
    return dataclasses.replace(tiny_cfg, eval=dataclasses.replace(tiny_cfg.eval, max_new_tokens=6, batch_size=4))


def test_select_test_split_keeps_answered_test_records(answered_dir):
    ds = load_dataset(answered_dir)
    test = select_test_split(ds)
    assert len(test) == 4 and set(test["split"]) == {"test"}
    assert test["id"] == sorted(test["id"])
    assert len(select_test_split(ds, max_cases=2)) == 2
    with pytest.raises(DataError, match="test split"):
        select_test_split(ds.filter(lambda s: s == "train", input_columns="split"))


@pytest.mark.slow
def test_answers_are_cached_resumed_and_invalidated(eval_cfg, answered_dir, tmp_path, monkeypatch):
    test = select_test_split(load_dataset(answered_dir))
    out = tmp_path / "eval"
    first = generate_answers(eval_cfg, ModelSpec("base"), test, out)
    assert len(first) == 4 and all(isinstance(a, str) for a in first)
    path = out / "generations" / "base.jsonl"
    lines = atomic.read_jsonl(path)
    assert [r["id"] for r in lines] == test["id"]

    # a re-run loads no model at all
    monkeypatch.setattr("cme_vlm.models.placement.load_for_inference", lambda *a, **k: pytest.fail("regenerated"))
    assert generate_answers(eval_cfg, ModelSpec("base"), test, out) == first
    monkeypatch.undo()

    # resume: drop the last line (a crash mid-run); only that record is generated again, greedily the same
    path.write_text("".join(__import__("json").dumps(r) + "\n" for r in lines[:3]))
    calls = []
    real = generation._batches
    monkeypatch.setattr(generation, "_batches", lambda items, size: calls.append(list(items)) or real(items, size))
    assert generate_answers(eval_cfg, ModelSpec("base"), test, out) == first
    assert calls == [[3]]

    # new settings -> new fingerprint -> the stale lines are dropped
    longer = dataclasses.replace(eval_cfg, eval=dataclasses.replace(eval_cfg.eval, max_new_tokens=7))
    assert model_fingerprint(longer, ModelSpec("base")) != model_fingerprint(eval_cfg, ModelSpec("base"))


def test_folder_fingerprint_follows_the_weight_files(tiny_cfg, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"x" * 10)
    spec = ModelSpec("sft", folder)
    before = model_fingerprint(tiny_cfg, spec)
    assert model_fingerprint(tiny_cfg, spec) == before
    os.utime(folder / "model.safetensors", ns=(1, 1))
    assert model_fingerprint(tiny_cfg, spec) != before


def test_fingerprint_ignores_how_the_greedy_answers_are_computed(tiny_cfg):
    """Cache and compilation change only the floating-point order of the same greedy decoding."""
    from cme_vlm.schema import CacheKind, GenerationConfig, Switch

    fast = dataclasses.replace(tiny_cfg, generation=GenerationConfig(cache=CacheKind.static, compile=Switch.always))
    assert model_fingerprint(fast, ModelSpec("base")) == model_fingerprint(tiny_cfg, ModelSpec("base"))

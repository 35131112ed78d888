"""Candidate sampling with the tiny model: K varied answers, duplicate handling, resuming a journal."""

from __future__ import annotations

from pathlib import Path

import pytest
from datasets import Dataset
from PIL import Image

from cme_vlm.preference import sampling
from cme_vlm.preference.sampling import duplicate_flags, read_journal, sample_candidates
from cme_vlm.schema import PreferenceConfig, SamplingSetting


def _rows(n: int) -> Dataset:
    return Dataset.from_list(
        [{"id": f"r{i}", "overlay": Image.new("RGB", (112, 112), (40 * i, 90, 60)), "prompt": "What is highlighted?"}
         for i in range(n)]
    )


def _cfg(**kw) -> PreferenceConfig:
    settings = [SamplingSetting(temperature=1.0, top_k=0, seed=1), SamplingSetting(temperature=1.3, top_k=0, seed=2)]
    return PreferenceConfig(k=2, sampling=settings, max_new_tokens=6, batch_size=2, **kw)


def test_duplicate_flags_normalise_case_and_space() -> None:
    assert duplicate_flags(["The IMV.", "the  imv.", "", "other"]) == [False, True, True, False]


def test_candidates_differ_and_land_in_the_journal(tiny_loaded, tmp_path: Path) -> None:
    out = sample_candidates(tiny_loaded, _rows(2), _cfg(), tmp_path / "candidates.jsonl")
    assert list(out) == ["r0", "r1"]
    for cs in out.values():
        assert len(cs.candidates) == 2 and cs.candidates[0] != cs.candidates[1]
    assert read_journal(tmp_path / "candidates.jsonl") == out


def test_duplicates_are_resampled_then_marked(tiny_loaded, tmp_path: Path) -> None:
    greedy = [SamplingSetting(temperature=1.0, top_k=1, seed=s) for s in (1, 2)]  # top-1: always the same answer
    cfg = PreferenceConfig(k=2, sampling=greedy, max_new_tokens=6, batch_size=2, max_resamples=2)
    out = sample_candidates(tiny_loaded, _rows(1), cfg, tmp_path / "c.jsonl")
    assert out["r0"].duplicate == [False, True]
    assert out["r0"].resamples == 2


def test_sampling_resumes_without_recomputing_finished_records(tiny_loaded, tmp_path: Path, monkeypatch) -> None:
    journal = tmp_path / "candidates.jsonl"
    real = sampling.generate
    seen: list[str] = []

    def crashing(loaded, images, prompts, **kw):
        if len(seen) >= 2:  # the first chunk (2 records, k=2 settings) finished; die in the second
            raise KeyboardInterrupt
        seen.append("call")
        return real(loaded, images, prompts, **kw)

    monkeypatch.setattr(sampling, "generate", crashing)
    rows = _rows(4)
    with pytest.raises(KeyboardInterrupt):
        sample_candidates(tiny_loaded, rows, _cfg(max_resamples=0), journal)
    first = read_journal(journal)
    assert set(first) == {"r0", "r1"}

    batches: list[int] = []

    def counting(loaded, images, prompts, **kw):
        batches.append(len(prompts))
        return real(loaded, images, prompts, **kw)

    monkeypatch.setattr(sampling, "generate", counting)
    out = sample_candidates(tiny_loaded, rows, _cfg(max_resamples=0), journal)
    assert batches == [2, 2]  # only r2 and r3, once per setting
    assert out["r0"] == first["r0"] and set(out) == {"r0", "r1", "r2", "r3"}
    assert len(read_journal(journal)) == 4

"""Candidate sampling with the tiny model: K varied answers, duplicate handling, resuming a journal."""

from __future__ import annotations

from pathlib import Path

import pytest
from datasets import Dataset
from forward_counts import counting_forwards
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
    return PreferenceConfig(k=2, sampling=settings, max_new_tokens=6, **{"batch_size": 2, **kw})


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
    real = sampling.prefill
    prefilled: list[int] = []

    def crashing(loaded, images, prompts, generation, caches):
        if prefilled:  # the first chunk (2 records) finished; die in the second
            raise KeyboardInterrupt
        prefilled.append(len(prompts))
        return real(loaded, images, prompts, generation, caches)

    monkeypatch.setattr(sampling, "prefill", crashing)
    rows = _rows(4)
    with pytest.raises(KeyboardInterrupt):
        sample_candidates(tiny_loaded, rows, _cfg(max_resamples=0), journal)
    first = read_journal(journal)
    assert len(first) == 2

    def counting(loaded, images, prompts, generation, caches):
        prefilled.append(len(prompts))
        return real(loaded, images, prompts, generation, caches)

    monkeypatch.setattr(sampling, "prefill", counting)
    out = sample_candidates(tiny_loaded, rows, _cfg(max_resamples=0), journal)
    assert prefilled == [2, 2]  # the two unfinished records, prefilled once for both settings
    assert all(out[r] == first[r] for r in first) and set(out) == {"r0", "r1", "r2", "r3"}
    assert len(read_journal(journal)) == 4


def test_each_record_is_encoded_and_prefilled_once_for_all_candidates(tiny_loaded, tmp_path: Path) -> None:
    greedy = [SamplingSetting(temperature=1.0, top_k=1, seed=s) for s in (1, 2, 3)]  # duplicates: re-sampled twice
    cfg = PreferenceConfig(k=3, sampling=greedy, max_new_tokens=4, batch_size=2, max_resamples=2)
    with counting_forwards(tiny_loaded) as counts:
        out = sample_candidates(tiny_loaded, _rows(3), cfg, tmp_path / "c.jsonl")
    assert all(cs.resamples == 4 for cs in out.values())  # two candidates, each re-sampled twice
    one, two = sorted(counts.vision_pixels)  # one vision pass per chunk: images of the same size, 1 and 2 of them
    assert two == 2 * one and sorted(counts.prefill_rows) == [1, 2]  # chunks of 2 and 1


def test_candidates_do_not_depend_on_the_chunk_they_fall_in(tiny_loaded, tmp_path: Path) -> None:
    rows = _rows(3).map(lambda r, i: {"prompt": "Name it." if i == 1 else r["prompt"]}, with_indices=True)
    alone = sample_candidates(tiny_loaded, rows, _cfg(batch_size=1), tmp_path / "one.jsonl")
    chunked = sample_candidates(tiny_loaded, rows, _cfg(batch_size=3), tmp_path / "three.jsonl")  # padded beside r1
    assert alone == chunked


def test_candidate_seeds_differ_per_record_setting_and_attempt() -> None:
    seeds = {sampling.candidate_seed(s, a, r) for s in (1, 2) for a in (0, 1) for r in ("r0", "r1")}
    assert len(seeds) == 8 and all(0 <= s < 2**64 for s in seeds)
    assert sampling.candidate_seed(1, 0, "r0") == sampling.candidate_seed(1, 0, "r0")

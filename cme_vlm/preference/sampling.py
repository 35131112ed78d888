"""Candidate sampling: the frozen SFT model answers each record K times with varied sampling settings.

Records are processed in chunks of ``preference.batch_size``; for each chunk every sampling
setting is one batched ``generate`` call. A candidate that repeats an earlier one of the same
record (after whitespace and case normalisation) is re-sampled with a shifted seed up to
``preference.max_resamples`` times, then kept and marked. Each finished record is appended to a
JSONL journal, so an interrupted run resumes without recomputing what it finished.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cme_vlm import atomic
from cme_vlm.models.generation import generate
from cme_vlm.models.loading import LoadedModel
from cme_vlm.schema import PreferenceConfig, SamplingSetting

RESAMPLE_SEED_STRIDE = 1_000_003  # a re-sample's seed: far from every configured seed


@dataclass(frozen=True)
class CandidateSet:
    """The K answers of one record, in the order of the sampling settings."""

    id: str
    candidates: list[str]
    duplicate: list[bool]  # still a repeat after every re-sample
    resamples: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def normalise(text: str) -> str:
    """The key under which two answers count as the same."""
    return " ".join(text.lower().split())


def duplicate_flags(candidates: Sequence[str]) -> list[bool]:
    """True where a candidate repeats an earlier one (or is empty)."""
    seen: set[str] = set()
    flags = []
    for text in candidates:
        key = normalise(text)
        flags.append(not key or key in seen)
        seen.add(key)
    return flags


def read_journal(path: Path) -> dict[str, CandidateSet]:
    """Finished records from a sampling journal (a torn last line is ignored)."""
    return {row["id"]: CandidateSet(**row) for row in atomic.read_jsonl(path)}


def _resample_setting(setting: SamplingSetting, attempt: int) -> SamplingSetting:
    return dataclasses.replace(setting, seed=setting.seed + attempt * RESAMPLE_SEED_STRIDE)


def _sample_chunk(
    loaded: LoadedModel, images: list[Image.Image], prompts: list[str], cfg: PreferenceConfig
) -> tuple[list[list[str]], list[int]]:
    """Per record: K candidates (duplicates re-sampled) and how many re-samples it took."""
    settings = cfg.sampling[: cfg.k]
    answers = [
        generate(loaded, images, prompts, settings=s, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
        for s in settings
    ]
    per_record = [[answers[k][i] for k in range(cfg.k)] for i in range(len(prompts))]
    resamples = [0] * len(prompts)
    for attempt in range(1, cfg.max_resamples + 1):
        for k, setting in enumerate(settings):
            todo = [i for i, cands in enumerate(per_record) if duplicate_flags(cands)[k]]
            if not todo:
                continue
            again = generate(
                loaded, [images[i] for i in todo], [prompts[i] for i in todo],
                settings=_resample_setting(setting, attempt), max_new_tokens=cfg.max_new_tokens,
                batch_size=cfg.batch_size,
            )
            for i, text in zip(todo, again):
                per_record[i][k] = text
                resamples[i] += 1
    return per_record, resamples


def sample_candidates(loaded: LoadedModel, records: Dataset, cfg: PreferenceConfig, journal: Path) -> dict[str, CandidateSet]:
    """K candidates for each record (``id``, ``overlay``, ``prompt``); resumes from ``journal``.

    Records are read chunk by chunk, so the images of a large dataset are never all in memory.
    """
    done = read_journal(journal)
    ids = records["id"]
    todo = [i for i, record_id in enumerate(ids) if record_id not in done]
    columns = (TextColumn("sampling candidates"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task("sample", total=len(ids), completed=len(ids) - len(todo))
        for start in range(0, len(todo), cfg.batch_size):
            chunk = [records[i] for i in todo[start : start + cfg.batch_size]]
            per_record, resamples = _sample_chunk(
                loaded, [r["overlay"].convert("RGB") for r in chunk], [r["prompt"] for r in chunk], cfg
            )
            for row, cands, n in zip(chunk, per_record, resamples):
                result = CandidateSet(row["id"], cands, duplicate_flags(cands), n)
                atomic.append_jsonl(journal, result.to_json())
                done[row["id"]] = result
            progress.advance(task, len(chunk))
    return {record_id: done[record_id] for record_id in ids}

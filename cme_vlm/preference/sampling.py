"""Candidate sampling: the frozen SFT model answers each record K times with varied sampling settings.

Records go from the shortest prompt to the longest in chunks of ``preference.batch_size``. Each
chunk's images and prompts are encoded and prefilled once (``cme_vlm.models.decoding.SharedPrefix``),
and all its K x chunk candidates are decoded from that prefix in one batch, each with its own
setting. A candidate's seed mixes its setting's seed with the record id (and the re-sample
attempt), so what it draws does not depend on the chunk it falls in. A candidate that repeats an
earlier one of the same record (after whitespace and case normalisation) is re-sampled from the
same prefix with the next attempt's seed up to ``preference.max_resamples`` times, then kept and
marked. Each finished record is appended to a JSONL journal, so an interrupted run resumes
without recomputing what it finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from cme_vlm import atomic
from cme_vlm.models.decoding import Draw, StaticCaches
from cme_vlm.models.generation import length_order, prefill
from cme_vlm.models.loading import LoadedModel
from cme_vlm.schema import GenerationConfig, PreferenceConfig, SamplingSetting


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


def candidate_seed(seed: int, attempt: int, record_id: str) -> int:
    """A 64-bit seed of one candidate: its setting's seed, the re-sample attempt (0 first) and the record."""
    digest = hashlib.sha256(f"{seed}:{attempt}:{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _draws(slots: list[tuple[int, int]], ids: list[str], settings: Sequence[SamplingSetting], attempt: int) -> list[Draw]:
    """One draw per (record, setting) slot, seeded for that record and attempt."""
    return [
        Draw(i, dataclasses.replace(settings[k], seed=candidate_seed(settings[k].seed, attempt, ids[i])))
        for i, k in slots
    ]


def _sample_chunk(
    loaded: LoadedModel, rows: list[dict[str, Any]], cfg: PreferenceConfig, generation: GenerationConfig,
    caches: StaticCaches,
) -> tuple[list[list[str]], list[int]]:
    """Per record: K candidates (duplicates re-sampled) and how many re-samples it took; one prefill for all."""
    images = [r["overlay"].convert("RGB") for r in rows]
    prefix = prefill(loaded, images, [r["prompt"] for r in rows], generation, caches)
    ids, settings = [r["id"] for r in rows], cfg.sampling[: cfg.k]
    per_record = [[""] * cfg.k for _ in rows]
    resamples = [0] * len(rows)
    slots = [(i, k) for i in range(len(rows)) for k in range(cfg.k)]
    for attempt in range(cfg.max_resamples + 1):
        if not slots:
            break
        for (i, k), text in zip(slots, prefix.answers(_draws(slots, ids, settings, attempt), cfg.max_new_tokens)):
            per_record[i][k] = text
            if attempt:
                resamples[i] += 1
        slots = [(i, k) for i, cands in enumerate(per_record) for k, dup in enumerate(duplicate_flags(cands)) if dup]
    return per_record, resamples


def sample_candidates(
    loaded: LoadedModel, records: Dataset, cfg: PreferenceConfig, journal: Path, generation: GenerationConfig | None = None
) -> dict[str, CandidateSet]:
    """K candidates for each record (``id``, ``overlay``, ``prompt``); resumes from ``journal``.

    Records are read chunk by chunk, so the images of a large dataset are never all in memory.
    """
    generation = generation or GenerationConfig()
    done = read_journal(journal)
    ids, prompts = records["id"], records["prompt"]
    todo = [i for i, record_id in enumerate(ids) if record_id not in done]
    todo = [todo[j] for j in length_order(loaded, [prompts[i] for i in todo])]
    columns = (TextColumn("sampling candidates"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    caches = StaticCaches()  # chunk after chunk of the same shape decodes into the same buffers
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task("sample", total=len(ids), completed=len(ids) - len(todo))
        for start in range(0, len(todo), cfg.batch_size):
            chunk = [records[i] for i in todo[start : start + cfg.batch_size]]
            per_record, resamples = _sample_chunk(loaded, chunk, cfg, generation, caches)
            for row, cands, n in zip(chunk, per_record, resamples):
                result = CandidateSet(row["id"], cands, duplicate_flags(cands), n)
                atomic.append_jsonl(journal, result.to_json())
                done[row["id"]] = result
            progress.advance(task, len(chunk))
    return {record_id: done[record_id] for record_id in ids}

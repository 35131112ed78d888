"""``cme-vlm preference build``: sample K candidates, judge pairs, precompute reference log-probs.

Reads the answered instruction dataset (train and val splits; the test split is kept for
evaluation) and the SFT model; writes ``out/candidates.jsonl`` (the resumable sampling
journal), ``out/selection.jsonl`` (every record's verdict or the reason it was kept out),
``out/dataset`` (the preference pairs), ``out/summary.json`` and ``out/config.yaml``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from datasets import Dataset
from rich.console import Console

from cme_vlm import atomic
from cme_vlm.config import save_config
from cme_vlm.data.geometry import mask_geometry
from cme_vlm.data.records import TRAINABLE_PROVENANCES, load_dataset, save_dataset
from cme_vlm.errors import DataError
from cme_vlm.models.loading import load_model
from cme_vlm.preference.judges import GeminiPairJudge, make_pair_judge
from cme_vlm.preference.records import preference_dataset, preference_row
from cme_vlm.preference.reference import precompute_reference
from cme_vlm.preference.sampling import CandidateSet, sample_candidates
from cme_vlm.preference.selection import PairContext, PairJudge, select_pair
from cme_vlm.schema import ExperimentConfig, JudgeBackend
from cme_vlm.teacher.request import RecordContext, mask_array

PAIR_SPLITS = ("train", "val")
CANDIDATES_FILE = "candidates.jsonl"
SELECTION_FILE = "selection.jsonl"
console = Console(stderr=True)


def _records(dataset: Path) -> Dataset:
    ds = load_dataset(dataset, "answered dataset")
    keep = [i for i, (split, prov, answer) in enumerate(zip(ds["split"], ds["provenance"], ds["answer"]))
            if split in PAIR_SPLITS and prov in TRAINABLE_PROVENANCES and answer.strip()]
    if not keep:
        raise DataError(
            f"answered dataset '{dataset}' has no answered train/val records. Run `cme-vlm teacher answer` first."
        )
    return ds.select(keep)


def _judge(cfg: ExperimentConfig, out: Path) -> PairJudge:
    client = None
    if cfg.preference.judge == JudgeBackend.gemini:
        from cme_vlm.teacher.gemini import GeminiClient

        client = GeminiClient(cfg.teacher.gemini, out / "journal.jsonl", out / "audit.jsonl", seed=cfg.seed)
    return make_pair_judge(cfg, client)


def _select(cfg: ExperimentConfig, records: Dataset, candidates: dict[str, CandidateSet], out: Path) -> list[dict]:
    """One preference row per record the judge can separate; every verdict goes to ``selection.jsonl``."""
    judge = _judge(cfg, out)
    rows, log = [], []
    for record in records.remove_columns(["overlay"]):
        context = PairContext(record["structure"], record["side"], record["phase"], record["prompt"],
                              record["answer"], mask_geometry(mask_array(record["mask"])))
        bound = judge.for_record(RecordContext.from_row(record)) if isinstance(judge, GeminiPairJudge) else judge
        sel = select_pair(bound, context, candidates[record["id"]].candidates, cfg.preference, record["id"])
        log.append({"id": record["id"], "ok": sel.ok, "reason": sel.reason, "accepted": sel.accepted,
                    "rejected": sel.rejected, "order_seed": sel.order_seed})
        if sel.ok:
            rows.append({"index": len(log) - 1, "accepted": sel.accepted, "rejected": sel.rejected,
                         "accepted_score": sel.accepted_score, "rejected_score": sel.rejected_score,
                         "judge": judge.name, "order_seed": sel.order_seed})
    atomic.write_text(out / SELECTION_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in log))
    return rows


def build_preferences(cfg: ExperimentConfig, dataset: Path, model: Path, out: Path) -> Path:
    """Sampling → pair selection → reference log-probs; returns the preference dataset folder."""
    out = Path(out)
    records = _records(Path(dataset))
    loaded = load_model(cfg, model)
    candidates = sample_candidates(loaded, records, cfg.preference, out / CANDIDATES_FILE)
    chosen = _select(cfg, records, candidates, out)
    if not chosen:
        raise DataError(
            f"the judge separated no pair among {len(records)} records (see {out / SELECTION_FILE}). "
            "Lower preference.min_margin, or check the SFT model's answers."
        )
    pairs = preference_dataset([preference_row(records[c.pop("index")], **c) for c in chosen])
    pairs = precompute_reference(loaded, pairs, cfg.preference.batch_size, cfg.dpo.max_length)
    target = save_dataset(pairs, out)
    save_config(cfg, out)
    atomic.write_json(out / "summary.json", _summary(records, candidates, pairs, out))
    console.print(f"[green]preference pairs[/] {len(pairs)} of {len(records)} records -> {target}")
    return target


def _summary(records: Dataset, candidates: dict[str, CandidateSet], pairs: Dataset, out: Path) -> dict[str, Any]:
    reasons = Counter(row["reason"].split(" (")[0] for row in atomic.read_jsonl(out / SELECTION_FILE) if not row["ok"])
    truth = dict(zip(records["id"], records["answer"]))
    return {
        "records": len(records),
        "pairs": len(pairs),
        "pairs_per_split": dict(Counter(pairs["split"])),
        "kept_out": dict(reasons),
        "duplicate_candidates": sum(sum(c.duplicate) for c in candidates.values()),
        "resamples": sum(c.resamples for c in candidates.values()),
        "accepted_is_ground_truth": sum(truth[i].strip() == a for i, a in zip(pairs["id"], pairs["accepted"])),
        "rejected_is_ground_truth": sum(truth[i].strip() == r for i, r in zip(pairs["id"], pairs["rejected"])),
    }

"""``cme-vlm preference build``: sample K candidates, judge pairs, precompute reference log-probs.

Reads the answered instruction dataset (train and val splits; the test split is kept for
evaluation) and the SFT model; writes ``out/candidates.jsonl`` (the resumable sampling
journal), ``out/selection.jsonl`` (every record's pair or the reason it was kept out, who decided, the
checks of the pair and whether they agree with the judge), ``out/dataset`` (the preference pairs),
``out/summary.json`` and ``out/config.yaml``; the summary's figures also go to a W&B run of the stage.
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
from cme_vlm.data.preference_records import preference_dataset, preference_row
from cme_vlm.data.records import TRAINABLE_PROVENANCES, load_dataset, save_dataset
from cme_vlm.errors import DataError
from cme_vlm.models.placement import load_for_inference
from cme_vlm.preference.checks import CHECK_NAMES, CandidateChecker
from cme_vlm.preference.judges import GeminiPairJudge, make_pair_judge
from cme_vlm.preference.reference import precompute_reference
from cme_vlm.preference.sampling import CandidateSet, sample_candidates
from cme_vlm.preference.selection import PairContext, PairJudge, Selection, judge_checks_agreement, select_pair
from cme_vlm.schema import ExperimentConfig, JudgeBackend, SelectionMode
from cme_vlm.teacher.request import RecordContext, mask_array
from cme_vlm.tracking import flat_metrics, stage_run

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


def _judge(cfg: ExperimentConfig, out: Path) -> PairJudge | None:
    """The configured pair judge; none when the checks alone pick the pairs."""
    if cfg.preference.selection is SelectionMode.checks:
        return None
    client = None
    if cfg.preference.judge == JudgeBackend.gemini:
        from cme_vlm.teacher.gemini import GeminiClient

        client = GeminiClient(cfg.teacher.gemini, out / "journal.jsonl", out / "audit.jsonl", seed=cfg.seed)
    return make_pair_judge(cfg, client)


def _selection_row(record_id: str, sel: Selection) -> dict[str, Any]:
    """One line of ``selection.jsonl``: the pair (or the reason it was kept out), who decided, and the checks."""
    checks = None
    if sel.accepted_checks is not None and sel.rejected_checks is not None:
        checks = {"accepted": sel.accepted_checks.as_dict(), "rejected": sel.rejected_checks.as_dict()}
    return {"id": record_id, "ok": sel.ok, "reason": sel.reason, "accepted": sel.accepted, "rejected": sel.rejected,
            "order_seed": sel.order_seed, "decided_by": sel.decided_by, "checks": checks,
            "judge_agrees": sel.judge_agrees}


def _select(cfg: ExperimentConfig, records: Dataset, candidates: dict[str, CandidateSet], out: Path) -> list[dict]:
    """One preference row per record that selection can separate; every record's outcome goes to ``selection.jsonl``."""
    judge = _judge(cfg, out)
    checker = CandidateChecker.from_config(cfg)
    rows, log = [], []
    for record in records.remove_columns(["overlay"]):
        context = PairContext(record["structure"], record["side"], record["phase"], record["prompt"],
                              record["answer"], mask_geometry(mask_array(record["mask"])))
        bound = judge.for_record(RecordContext.from_row(record)) if isinstance(judge, GeminiPairJudge) else judge
        sel = select_pair(bound, context, candidates[record["id"]].candidates, cfg.preference, record["id"], checker)
        log.append(_selection_row(record["id"], sel))
        if sel.ok:
            rows.append({"index": len(log) - 1, "accepted": sel.accepted, "rejected": sel.rejected,
                         "accepted_score": sel.accepted_score, "rejected_score": sel.rejected_score,
                         "judge": judge.name if judge is not None and sel.decided_by == "judge" else "checks",
                         "order_seed": sel.order_seed})
    atomic.write_text(out / SELECTION_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in log))
    return rows


def build_preferences(cfg: ExperimentConfig, dataset: Path, model: Path, out: Path) -> Path:
    """Sampling → pair selection → reference log-probs; returns the preference dataset folder."""
    out = Path(out)
    records = _records(Path(dataset))
    loaded = load_for_inference(cfg, model)
    candidates = sample_candidates(loaded, records, cfg.preference, out / CANDIDATES_FILE, cfg.generation)
    chosen = _select(cfg, records, candidates, out)
    if not chosen:
        raise DataError(
            f"pair selection (preference.selection={cfg.preference.selection.value}) kept no pair among "
            f"{len(records)} records (see {out / SELECTION_FILE}). Lower preference.min_margin, choose another "
            "preference.selection, or check the SFT model's answers."
        )
    pairs = preference_dataset([preference_row(records[c.pop("index")], **c) for c in chosen])
    pairs = precompute_reference(loaded, pairs, cfg.preference.batch_size, cfg.dpo.max_length)
    target = save_dataset(pairs, out)
    save_config(cfg, out)
    summary = _summary(cfg, records, candidates, pairs, out)
    atomic.write_json(out / "summary.json", summary)
    console.print(f"[green]preference pairs[/] {len(pairs)} of {len(records)} records -> {target}")
    if summary["no_verdict_final"]:
        console.print(f"[yellow]{summary['no_verdict_final']} record(s) got no pair verdict for a final reason "
                      f"(blocked, or off-schema after every retry; see {out / SELECTION_FILE}): a re-run will not ask "
                      "again, and they stay out of the pairs.[/]")
    _report_agreement(cfg, out, summary)
    return target


def _report_agreement(cfg: ExperimentConfig, out: Path, summary: dict[str, Any]) -> None:
    """Print the judge–checks agreement and log the summary's figures to the stage's W&B run."""
    agreement = summary["judge_checks_agreement"]
    if agreement["records"]:
        console.print(f"judge–checks agreement {agreement['rate']:.3f} over the {agreement['records']} records "
                      "where both prefer one answer of the judge's pair")
    else:
        console.print("judge–checks agreement: no record where both the judge and the checks prefer an answer")
    with stage_run(cfg, out, "preference") as run:
        run.log(flat_metrics("preference", {k: v for k, v in summary.items() if k != "kept_out"}))


def _selection_summary(cfg: ExperimentConfig, log: list[dict]) -> dict[str, Any]:
    """Who decided how many pairs, the judge–checks agreement, and each check's pass rate in the kept pairs."""
    decided_by = {who: {"pairs": 0, "kept_out": 0} for who in ("judge", "checks")}
    for row in log:
        decided_by[row["decided_by"]]["pairs" if row["ok"] else "kept_out"] += 1
    kept = [row["checks"] for row in log if row["ok"] and row["checks"]]
    passed = {side: {name: sum(c[side][name] for c in kept) / len(kept) for name in CHECK_NAMES}
              for side in ("accepted", "rejected")} if kept else {}
    return {
        "selection": cfg.preference.selection.value,
        "filter_action": cfg.preference.filter_action.value,
        "decided_by": decided_by,
        "judge_checks_agreement": judge_checks_agreement([row["judge_agrees"] for row in log]),
        "checks_passed": passed,
    }


def _summary(
    cfg: ExperimentConfig, records: Dataset, candidates: dict[str, CandidateSet], pairs: Dataset, out: Path
) -> dict[str, Any]:
    log = atomic.read_jsonl(out / SELECTION_FILE)
    reasons = Counter(row["reason"].split(" (")[0] for row in log if not row["ok"])
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
        "no_verdict_final": sum(not row["ok"] and "no verdict from" in row["reason"] for row in log),
        **_selection_summary(cfg, log),
    }

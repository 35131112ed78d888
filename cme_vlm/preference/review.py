"""Expert review of preference pairs: export a sheet (CSV + HTML, or served as a local web form),
import approve / swap / reject.

The CSV's ``decision`` column takes ``approve``, ``swap`` (the judge had the pair the wrong way
round: accepted and rejected, their scores and reference log-probs trade places), ``reject``
(the pair leaves training) or stays empty. The round trip itself is ``cme_vlm.review_sheet``;
this module says what a pair review shows and what a swap changes.
"""

from __future__ import annotations

from pathlib import Path

from cme_vlm import review_sheet
from cme_vlm.review_sheet import Decision, SheetSpec
from cme_vlm.schema import ExperimentConfig

SWAPPED = (("accepted", "rejected"), ("accepted_score", "rejected_score"), ("ref_logp_accepted", "ref_logp_rejected"))

SPEC = SheetSpec(
    title="Preference pair review",
    unit="pair",
    what="preference dataset",
    data_columns=("id", "structure", "side", "phase", "prompt", "accepted", "rejected"),
    review_columns=("decision", "comment"),
    decisions={"approve": "expert_approved", "swap": "expert_swapped", "reject": "expert_rejected"},
    reviewable="judge",
    nothing_to_review="judge-chosen pairs",
    producer="cme-vlm preference build",
    shown=(("Prompt", "prompt"), ("Accepted", "accepted"), ("Rejected", "rejected")),
    instruction="approve, swap (accepted is worse) or reject.",
    export_command="preference review-export",
    import_command="preference review-import",
)


def _apply(row: dict, decided: Decision) -> dict:
    if decided.provenance != "expert_swapped":
        return row
    row = dict(row)
    for a, b in SWAPPED:
        row[a], row[b] = row[b], row[a]
    return row


def export_sheet(cfg: ExperimentConfig, dataset: Path, out: Path) -> Path:
    """Write ``out/review.csv`` and ``out/review.html`` for a seeded ``review.fraction`` sample of pairs."""
    return review_sheet.export_sheet(SPEC, cfg, dataset, out)


def import_sheet(cfg: ExperimentConfig, sheet: Path, dataset: Path) -> Path:
    """Apply a filled sheet to the preference ``dataset`` (rewritten atomically)."""
    return review_sheet.import_sheet(SPEC, sheet, dataset, _apply)


def serve_sheet(cfg: ExperimentConfig, sheet: Path, dataset: Path, host: str = "127.0.0.1", port: int = 0,
                allow_remote: bool = False) -> Path:
    """Serve an exported ``sheet`` as a local web form until Ctrl-C; each entry is saved into it as made."""
    return review_sheet.serve_sheet(SPEC, sheet, dataset, host, port, allow_remote)

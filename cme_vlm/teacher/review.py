"""Expert review of teacher answers: export a sheet (CSV + HTML, or served as a local web form),
import approvals, edits, rejections.

The CSV's ``decision`` column takes ``approve``, ``edit`` (with ``edited_answer``), ``reject`` or
stays empty (not reviewed). The round trip itself (sampling, sheet, whole-sheet check, atomic
rewrite) is ``cme_vlm.review_sheet``; this module says what an answer review shows and what an
edit changes.
"""

from __future__ import annotations

from pathlib import Path

from cme_vlm import review_sheet
from cme_vlm.review_sheet import Decision, SheetSpec
from cme_vlm.schema import ExperimentConfig


def _edit_has_text(decision: str, cells: dict[str, str]) -> str:
    if decision == "edit" and not cells.get("edited_answer"):
        return "decision 'edit' needs the corrected text in edited_answer"
    return ""


SPEC = SheetSpec(
    title="Teacher answer review",
    unit="record",
    what="answered dataset",
    data_columns=("id", "structure", "side", "phase", "prompt", "answer"),
    review_columns=("decision", "edited_answer", "comment"),
    decisions={"approve": "expert_approved", "edit": "expert_edited", "reject": "expert_rejected"},
    reviewable="teacher",
    nothing_to_review="teacher answers",
    producer="cme-vlm teacher answer",
    shown=(("Prompt", "prompt"), ("Answer", "answer")),
    instruction="approve, edit (with edited_answer) or reject.",
    export_command="review export",
    import_command="review import",
    row_check=_edit_has_text,
)


def _apply(row: dict, decided: Decision) -> dict:
    if decided.provenance == "expert_edited":
        return {**row, "answer": decided.cells["edited_answer"]}
    return row


def export_sheet(cfg: ExperimentConfig, dataset: Path, out: Path) -> Path:
    """Write ``out/review.csv`` and ``out/review.html`` for a seeded ``review.fraction`` sample."""
    return review_sheet.export_sheet(SPEC, cfg, dataset, out)


def import_sheet(cfg: ExperimentConfig, sheet: Path, dataset: Path) -> Path:
    """Apply a filled sheet to ``dataset`` (rewritten atomically); rejected records leave training."""
    return review_sheet.import_sheet(SPEC, sheet, dataset, _apply)


def serve_sheet(cfg: ExperimentConfig, sheet: Path, dataset: Path, host: str = "127.0.0.1", port: int = 0,
                allow_remote: bool = False) -> Path:
    """Serve an exported ``sheet`` as a local web form until Ctrl-C; each entry is saved into it as made."""
    return review_sheet.serve_sheet(SPEC, sheet, dataset, host, port, allow_remote)

"""The preference dataset: one (accepted, rejected) pair per instruction record, stored with ``datasets``.

Columns (``PREFERENCE_FEATURES``):

- ``id``: the instruction record's id; ``structure, side, phase, split, prompt, overlay`` copied from it
- ``accepted``, ``rejected``: the two answers the judge designated
- ``accepted_score``, ``rejected_score``: the judge's composite scores (1–5; NaN if it gives none)
- ``judge``: which judge chose (``rubric`` or the Gemini model name), ``order_seed``: the seed of
  the candidate order it was shown
- ``provenance``: ``judge``, ``expert_approved``, ``expert_swapped`` or ``expert_rejected``
- ``ref_logp_accepted``, ``ref_logp_rejected``: summed log-probs of each answer under the frozen
  SFT model (the DPO reference); NaN until computed
"""

from __future__ import annotations

import math
from typing import Any

from datasets import Dataset, Features, Value

from cme_vlm.data.records import RECORD_FEATURES
from cme_vlm.errors import DataError

# the instruction record's columns a pair carries along, typed as in the instruction dataset
RECORD_COLUMNS = ("id", "structure", "side", "phase", "split", "prompt", "overlay")

PREFERENCE_FEATURES = Features(
    {
        **{name: RECORD_FEATURES[name] for name in RECORD_COLUMNS},
        "accepted": Value("string"),
        "rejected": Value("string"),
        "accepted_score": Value("float64"),
        "rejected_score": Value("float64"),
        "judge": Value("string"),
        "order_seed": Value("int64"),
        "provenance": Value("string"),
        "ref_logp_accepted": Value("float64"),
        "ref_logp_rejected": Value("float64"),
    }
)

PAIR_PROVENANCES = ("judge", "expert_approved", "expert_swapped", "expert_rejected")
TRAINABLE_PAIR_PROVENANCES = ("judge", "expert_approved", "expert_swapped")


def preference_row(record: dict[str, Any], accepted: str, rejected: str, **fields: Any) -> dict[str, Any]:
    """A preference row from an instruction record and its pair; other columns from ``fields``."""
    row = {k: record[k] for k in RECORD_COLUMNS}
    row.update(
        accepted=accepted,
        rejected=rejected,
        accepted_score=math.nan,
        rejected_score=math.nan,
        judge="",
        order_seed=0,
        provenance="judge",
        ref_logp_accepted=math.nan,
        ref_logp_rejected=math.nan,
    )
    unknown = set(fields) - set(PREFERENCE_FEATURES)
    if unknown:
        raise ValueError(f"preference_row: unknown columns {sorted(unknown)}")
    row.update(fields)
    return row


def preference_dataset(rows: list[dict[str, Any]]) -> Dataset:
    """Rows (from ``preference_row``) → a ``Dataset`` with ``PREFERENCE_FEATURES``."""
    columns = {name: [row[name] for row in rows] for name in PREFERENCE_FEATURES}
    return Dataset.from_dict(columns, features=PREFERENCE_FEATURES)


def check_preference_dataset(ds: Dataset, what: str, need_reference: bool) -> None:
    """Refuse a dataset DPO cannot learn from, naming the first bad pair and the fix."""
    missing = [c for c in PREFERENCE_FEATURES if c not in ds.column_names]
    if missing:
        raise DataError(
            f"{what} lacks the preference columns {missing}; it is not a preference dataset. "
            "Point to the dataset written by `cme-vlm preference build`."
        )
    if len(ds) == 0:
        raise DataError(f"{what} holds no preference pairs. Re-run `cme-vlm preference build` with more records.")
    text = ds.select_columns(["id", "accepted", "rejected", "ref_logp_accepted", "ref_logp_rejected"])
    for row in text:
        if row["accepted"].strip() == row["rejected"].strip():
            raise DataError(
                f"{what}: pair '{row['id']}' has identical accepted and rejected answers, which gives DPO "
                "no signal. Remove it or re-run `cme-vlm preference build`."
            )
        if need_reference and not all(math.isfinite(row[k]) for k in ("ref_logp_accepted", "ref_logp_rejected")):
            raise DataError(
                f"{what}: pair '{row['id']}' has no reference log-probs (ref_logp_accepted/rejected are NaN). "
                "Re-run `cme-vlm preference build`, or set dpo.reference=in_memory."
            )

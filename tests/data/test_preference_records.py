"""The preference dataset's columns and the checks DPO training relies on."""

from __future__ import annotations

import math

import pytest
from PIL import Image

from cme_vlm.data.preference_records import (
    PREFERENCE_FEATURES,
    check_preference_dataset,
    preference_dataset,
    preference_row,
)
from cme_vlm.errors import DataError

RECORD = {"id": "r1", "structure": "imv", "side": "left", "phase": "p", "split": "train", "prompt": "q",
          "overlay": Image.new("RGB", (8, 8)), "procedure": "P01", "frame": "f.png"}


def _ds(accepted: str = "good", rejected: str = "bad", ref: float = math.nan):
    row = preference_row(RECORD, accepted, rejected, judge="rubric", ref_logp_accepted=ref, ref_logp_rejected=ref)
    return preference_dataset([row])


def test_rows_carry_the_contract_columns_and_no_local_identifiers() -> None:
    ds = _ds(ref=-3.0)
    assert set(ds.column_names) == set(PREFERENCE_FEATURES)
    assert "procedure" not in ds.column_names and "frame" not in ds.column_names
    assert ds[0]["overlay"].size == (8, 8) and ds[0]["ref_logp_accepted"] == -3.0
    check_preference_dataset(ds, "pairs", need_reference=True)
    with pytest.raises(ValueError, match="unknown columns"):
        preference_row(RECORD, "a", "b", winner="a")


def test_identical_answers_are_refused_with_the_pair_named() -> None:
    with pytest.raises(DataError, match="'r1' has identical accepted and rejected"):
        check_preference_dataset(_ds("same answer", " same answer "), "pairs", need_reference=False)


def test_missing_reference_logprobs_are_refused_only_when_needed() -> None:
    ds = _ds()
    check_preference_dataset(ds, "pairs", need_reference=False)
    with pytest.raises(DataError, match="no reference log-probs.*dpo.reference=in_memory"):
        check_preference_dataset(ds, "pairs", need_reference=True)
    with pytest.raises(DataError, match="lacks the preference columns"):
        check_preference_dataset(ds.remove_columns("judge"), "pairs", need_reference=False)

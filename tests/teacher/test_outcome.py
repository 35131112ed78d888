"""The one rule for failed remote calls: which reasons are final, which are asked again."""

from __future__ import annotations

import pytest

from cme_vlm.teacher.outcome import Failure

FINAL = ["blocked:SAFETY", "blocked:PROHIBITED_CONTENT", "schema:not_json", "schema:answer required", "schema:MAX_TOKENS"]
TRANSIENT = ["http:503", "http:429", "timeout:ReadTimeout", "network:ReadError", "body:not_json", "empty:no_candidates",
             "empty:no_text"]
# Reasons the code before this rule journalled as final after a single attempt.
LEGACY = ["empty", "malformed", "truncated", "schema", "http_503", "timeout", "network"]


@pytest.mark.parametrize("reason", FINAL)
def test_refusals_and_answers_off_the_schema_are_final(reason):
    assert Failure.from_reason(reason).final and Failure.from_reason(reason).reason == reason


@pytest.mark.parametrize("reason", TRANSIENT + LEGACY)
def test_faults_of_the_way_and_legacy_reasons_are_asked_again(reason):
    assert not Failure.from_reason(reason).final


def test_only_a_refusal_ends_the_retries_of_a_call():
    assert [r for r in FINAL + TRANSIENT if not Failure.from_reason(r).retry_now] == FINAL[:2]

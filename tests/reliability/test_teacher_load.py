"""The teacher stage under load: 500 records, 30 % of requests faulty or slow, a requests-per-minute limit.

The fake endpoint records when every request arrives and how it answered it; the stage must stay
under its rate limit, never be answered twice for the same request, account for every outcome in
``summary.json`` exactly as the fake produced it, and on a re-run ask again only what is unanswered.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
from fake_gemini import Fault, FakeGemini

from cme_vlm.config import load_config
from cme_vlm.data.records import RECORD_FEATURES, load_dataset, save_dataset
from cme_vlm.teacher.stage import answer

from .conftest import KEY, KEY_ENV, gemini_overrides

N_RECORDS = 500
RPM = 1500  # 25 requests a second: below what the client could send here, so the limit binds
FAULTS = [Fault.status(429, retry_after="0.01"), Fault.status(500), Fault.status(503), Fault.status(503),
          Fault.delay(0.3), Fault.delay(0.3), Fault.blocked(), Fault.malformed()]
OUTCOME = {"blocked": "blocked:SAFETY", "malformed": "malformed"}  # the fault -> the failure it must be reported as


class TimedFake(FakeGemini):
    """The fake endpoint, also noting when each request arrived."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.arrivals: list[float] = []

    def _next_fault(self):
        self.arrivals.append(time.monotonic())
        return super()._next_fault()


@pytest.fixture(scope="module")
def many_records(built_dataset, tmp_path_factory):
    """500 instruction records: the built dataset's rows repeated, each with its own id and prompt wording."""
    ds = load_dataset(built_dataset)
    rows = ds.select([i % len(ds) for i in range(N_RECORDS)])
    ids = [f"{rid[:8]}{i:08d}" for i, rid in enumerate(rows["id"])]
    prompts = [f"{p} (Question {i}.)" for i, p in enumerate(rows["prompt"])]
    rows = rows.remove_columns(["id", "prompt"]).add_column("id", ids).add_column("prompt", prompts)
    rows = rows.select_columns(list(RECORD_FEATURES))  # images pass through undecoded
    assert rows.features == RECORD_FEATURES
    folder = tmp_path_factory.mktemp("load") / "01-data"
    save_dataset(rows, folder)
    return folder


def _final_outcomes(fake: FakeGemini) -> dict[str, str]:
    """Per request digest: "" when its last attempt was answered, else the failure the stage must report."""
    last = {}
    for call in fake.calls:
        last[call.digest] = call.fault
    outcomes = {}
    for digest, fault in last.items():
        if fault is None or fault.kind == "delay":
            outcomes[digest] = ""
        elif fault.kind == "status":
            outcomes[digest] = f"http_{fault.code}"  # out of retries: transient, asked again on a re-run
        else:
            outcomes[digest] = OUTCOME[fault.kind]
    return outcomes


def _max_in_one_second(arrivals: list[float]) -> int:
    times = sorted(arrivals)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.mark.slow
def test_500_records_under_faults_stay_in_rate_pay_once_and_are_counted(many_records, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    out = tmp_path / "02-teacher"
    with TimedFake(seed=7) as fake:
        cfg = load_config(None, ["teacher=gemini", *gemini_overrides(fake.url, RPM), "teacher.gemini.concurrency=8",
                                 "teacher.max_failure_fraction=1.0"])
        fake.fault_rate, fake.fault_pool = 0.3, FAULTS
        started = time.monotonic()
        answer(cfg, many_records, out)
        seconds = time.monotonic() - started
        outcomes = _final_outcomes(fake)
        injected = Counter(c.fault.kind if c.fault.kind != "status" else c.fault.code for c in fake.calls if c.fault)
        first_calls, first_answered = len(fake.calls), dict(fake.answered)

        assert len(outcomes) == N_RECORDS  # every record asked, each with its own content
        assert max(fake.answered.values()) == 1  # no request paid for twice
        assert sum(injected.values()) >= 0.25 * first_calls and injected["delay"] and injected[503]
        assert _max_in_one_second(fake.arrivals) <= RPM / 60 + 3
        assert seconds >= (first_calls - 1) * 60 / RPM * 0.95  # the limit held over the whole run
        assert len((out / "audit.jsonl").read_text().splitlines()) == first_calls  # every attempt audited

        summary = json.loads((out / "summary.json").read_text())
        failures = Counter(reason for reason in outcomes.values() if reason)
        assert summary["records"] == N_RECORDS
        assert summary["answered"] == sum(1 for r in outcomes.values() if not r) == len(first_answered)
        assert summary["failed_by_reason"] == dict(failures)
        assert summary["failed_by_reason"].get("blocked:SAFETY") and summary["failed_by_reason"].get("malformed")
        ds = load_dataset(out)
        assert sum(p == "teacher" for p in ds["provenance"]) == summary["answered"]
        assert all(a == "" for a, p in zip(ds["answer"], ds["provenance"]) if p == "")

        fake.fault_rate = 0.0  # the re-run: only what is still transiently unanswered is asked again
        answer(cfg, many_records, out)
        again = fake.calls[first_calls:]
        transient = {d for d, r in outcomes.items() if r.startswith("http_")}
        assert {c.digest for c in again} == transient
        assert max(fake.answered.values()) == 1
    rerun = json.loads((out / "summary.json").read_text())
    assert rerun["cached"] == summary["answered"] and rerun["answered"] == summary["answered"] + len(transient)
    assert rerun["failed_by_reason"] == {k: v for k, v in failures.items() if not k.startswith("http_")}

"""The teacher stage under load: 500 records, 30 % of requests faulty in every way we know, a requests-per-minute limit.

The fake endpoint records when every request arrives and how it answered it. The stage must end
with every record answered or failed for a final reason (a safety block, an answer off the schema
on every retry), stay under its rate limit, never be answered twice for the same request, and account
for every outcome in ``summary.json`` and the journal exactly as the fake produced it.
The run's figures are printed (``pytest -s``): requests, faults by kind, retries, answered, final
failures, duplicate payments.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
from fake_gemini import FakeGemini, Fault, audited_requests

from cme_vlm.config import load_config
from cme_vlm.data.records import RECORD_FEATURES, load_dataset, save_dataset
from cme_vlm.teacher.cache import Journal
from cme_vlm.teacher.stage import answer

from .conftest import KEY, KEY_ENV, gemini_overrides

N_RECORDS = 500
RPM = 1500  # 25 requests a second: the client reaches it in bursts here (the figures give the busiest window)
MAX_RETRIES = 10  # a record meets eleven faults in a row with odds of about 1e-7: every record settles
TIMEOUT_S = 2.0  # well above a normal answer's time here, so only the hangs time out
CONCURRENCY = 8
WINDOW_S = 5.0
FAULTS = [
    Fault.status(429, retry_after="0.01"), Fault.status(500), Fault.status(503), Fault.delay(0.3),
    Fault.hang(TIMEOUT_S + 0.3), Fault.reset(), Fault.truncated(), Fault.not_json(), Fault.empty(), Fault.no_text(),
    Fault.blocked(), Fault.prompt_blocked(), Fault.off_schema(sticky=True),
]
FINAL = {"blocked": "blocked:SAFETY", "prompt_blocked": "blocked:SAFETY", "off_schema": "schema:not_json"}
ANSWERED = (None, "delay")  # the last attempt's fault when the record was answered


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


def _kind(fault: Fault | None) -> str | None:
    return None if fault is None else f"http_{fault.code}" if fault.kind == "status" else fault.kind


def _max_in_window(arrivals: list[float], seconds: float) -> int:
    """The most requests that arrived within any ``seconds`` long window."""
    times = sorted(arrivals)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= seconds:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.mark.slow
def test_500_records_under_every_fault_settle_stay_in_rate_and_pay_once(many_records, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    out = tmp_path / "02-teacher"
    with FakeGemini(seed=7) as fake:
        cfg = load_config(None, ["teacher=gemini", *gemini_overrides(fake.url, RPM), f"teacher.gemini.concurrency={CONCURRENCY}",
                                 f"teacher.gemini.max_retries={MAX_RETRIES}", f"teacher.gemini.timeout_s={TIMEOUT_S}",
                                 "teacher.max_failure_fraction=1.0"])
        fake.fault_rate, fake.fault_pool = 0.3, FAULTS
        started = time.monotonic()
        answer(cfg, many_records, out)
        seconds = time.monotonic() - started
        calls = list(fake.calls)

    attempts = Counter(c.digest for c in calls)
    last = {c.digest: _kind(c.fault) for c in calls}
    injected = Counter(_kind(c.fault) for c in calls if c.fault)
    final = Counter(FINAL[kind] for kind in last.values() if kind in FINAL)
    busiest = _max_in_window([c.arrived for c in calls], WINDOW_S)
    print("fault-run figures:", json.dumps({
        "records": N_RECORDS, "requests": len(calls), "faults": sum(injected.values()),
        "faults_by_kind": dict(sorted(injected.items())), "retries": len(calls) - len(attempts),
        "answered": sum(kind in ANSWERED for kind in last.values()), "final_failures": dict(sorted(final.items())),
        "duplicate_payments": sum(n - 1 for n in fake.answered.values()),
        f"most_requests_in_{WINDOW_S}_s": busiest, f"limit_in_{WINDOW_S}_s": RPM / 60 * WINDOW_S,
        "seconds": round(seconds, 1),
    }))
    assert len(attempts) == N_RECORDS  # every record asked, each with its own content
    assert set(injected) == {_kind(f) for f in FAULTS} and sum(injected.values()) >= 0.25 * len(calls)
    assert all(kind in ANSWERED or kind in FINAL for kind in last.values())  # no record left on a transient fault
    assert all(attempts[d] == MAX_RETRIES + 1 for d, kind in last.items() if kind == "off_schema")
    assert max(fake.answered.values()) == 1  # no request paid for twice
    # The client spaces request starts 60/RPM s apart; on the way to the server (audit fsync, threads) a start can
    # slip into a later window, but only the CONCURRENCY requests in flight at the window's start can.
    assert busiest <= RPM / 60 * WINDOW_S + 1 + CONCURRENCY
    assert seconds >= (len(calls) - 1) * 60 / RPM * 0.95  # the limit held over the whole run
    assert len(audited_requests(out / "audit.jsonl")) == len(calls)  # every attempt audited

    summary = json.loads((out / "summary.json").read_text())
    assert summary["records"] == N_RECORDS and summary["cached"] == 0
    assert summary["answered"] == sum(kind in ANSWERED for kind in last.values()) == len(fake.answered)
    assert summary["failed_by_reason"] == dict(sorted(final.items())) and set(final) == set(FINAL.values())
    assert len(Journal(out / "journal.jsonl")) == N_RECORDS  # every outcome final and journalled
    ds = load_dataset(out)
    assert sum(p == "teacher" for p in ds["provenance"]) == summary["answered"]
    assert all(a == "" for a, p in zip(ds["answer"], ds["provenance"]) if p == "")

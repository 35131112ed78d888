"""Crash and resume: ``cme-vlm run`` SIGKILLed in every long stage, re-run, ends as an uninterrupted run.

One run is killed four times at seeded random points, once each stage has made progress (the
teacher's and the pair judge's response journals against a fake Gemini endpoint, the sampling
journal, the evaluation's generation cache), and re-run after each kill: its datasets must equal an
uninterrupted run's bit for bit and no finished stage is redone. Another is killed after a seeded
SFT step: the trainer must go on from that checkpoint with its optimizer state, redoing nothing.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fake_gemini import FakeGemini

from cme_vlm import atomic
from cme_vlm.config_files import REPO_ROOT
from cme_vlm.data.records import load_dataset, raw_images

from .conftest import TINY, cli, finish, gemini_overrides, jsonl_lines, kill_when, schema_answer

SEED = int(os.environ.get("CME_CRASH_SEED", "0"))


def _slow_answer(body: dict) -> dict:
    time.sleep(0.03)  # slow enough that a kill lands while requests are still going out
    return schema_answer(body)


def _args(run: Path, url: str) -> list[str]:
    return ["run", "--config", str(REPO_ROOT / "experiments" / "demo.yaml"), "--run-dir", str(run), *TINY,
            "teacher=gemini", "preference.judge=gemini", *gemini_overrides(url), "teacher.gemini.concurrency=1"]


def _generations(run: Path) -> int:
    return sum(jsonl_lines(p) for p in (run / "06-eval" / "generations").glob("*.jsonl"))


# stage -> (has it made progress past the seeded point t?, the range t is drawn from)
KILL_POINTS: dict[str, tuple[Callable[[Path, int], bool], range]] = {
    "teacher": (lambda run, t: jsonl_lines(run / "02-teacher" / "journal.jsonl") >= t, range(2, 12)),
    "preference sampling": (lambda run, t: jsonl_lines(run / "04-preference" / "candidates.jsonl") >= 4 * t, range(1, 4)),
    "pair selection": (lambda run, t: jsonl_lines(run / "04-preference" / "journal.jsonl") >= t, range(2, 10)),
    "evaluation generation": (lambda run, t: _generations(run) >= t, range(1, 7)),
}


def _finished_stages(run: Path) -> dict[str, dict[str, int]]:
    """Every file (and its mtime) of each stage marked done: what a re-run must leave alone."""
    done = {}
    for folder in sorted(run.glob("0*-*")):
        status = folder / "stage.json"
        if status.is_file() and '"done"' in status.read_text():
            # later stages' `datasets` filters leave cache-*.arrow files in an input dataset's folder (see report)
            done[folder.name] = {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")
                                 if p.is_file() and not p.name.startswith("cache-")}
    return done


@pytest.fixture(scope="module")
def endpoint():
    with FakeGemini(answer=schema_answer) as fake:
        yield fake


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, endpoint) -> Path:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    finish(cli(_args(run, endpoint.url), run.parent / "log"), run.parent / "log")
    return run


def _rows(folder: Path, drop: tuple[str, ...] = ()) -> list[dict]:
    """The records as stored (PNG bytes), NaN written as "nan" so that equal rows compare equal."""
    ds = raw_images(load_dataset(folder)).remove_columns(list(drop))
    return [{k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()} for row in ds.to_list()]


def _answers(run: Path) -> dict[str, list[tuple[str, str]]]:
    return {p.stem: [(r["id"], r["answer"]) for r in atomic.read_jsonl(p)]
            for p in sorted((run / "06-eval" / "generations").glob("*.jsonl"))}


@pytest.mark.slow
def test_killed_in_every_long_stage_resumes_to_the_same_result(uninterrupted, tmp_path):
    rng = random.Random(SEED)
    run, log = tmp_path / "run", tmp_path / "log"
    finished: dict[str, dict[str, int]] = {}
    with FakeGemini(answer=_slow_answer) as fake:
        for stage, (progressed, points) in KILL_POINTS.items():
            t = rng.choice(points)
            kill_when(cli(_args(run, fake.url), log), lambda: progressed(run, t), log)
            now = _finished_stages(run)
            assert {k: now[k] for k in finished} == finished, f"a finished stage was redone after the {stage} kill"
            finished = now
        finish(cli(_args(run, fake.url), log), log)
        paid = dict(fake.answered)
    final = _finished_stages(run)
    assert {k: final[k] for k in finished} == finished
    assert len(final) == 7

    # the paid requests: at most the one in flight at each of the two kills inside a Gemini stage is paid twice
    assert max(paid.values()) <= 2 and sum(n - 1 for n in paid.values()) <= 2

    # bit-identical datasets (the teacher's answer times are wall-clock, the rest must match)
    ref = uninterrupted
    assert _rows(run / "01-data") == _rows(ref / "01-data")
    assert _rows(run / "02-teacher", ("answered_at",)) == _rows(ref / "02-teacher", ("answered_at",))
    assert _rows(run / "04-preference") == _rows(ref / "04-preference")
    assert _answers(run) == _answers(ref)


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _assert_same_tensors(a[k], b[k])
        else:
            assert torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])), k


@pytest.fixture(scope="module")
def killed_in_sft(uninterrupted, endpoint, tmp_path_factory):
    """The uninterrupted run's first three stages, then ``cme-vlm run`` killed after a seeded SFT step and re-run."""
    run = tmp_path_factory.mktemp("killed-in-sft") / "run"
    log = run.parent / "log"
    shutil.copytree(uninterrupted, run, symlinks=True)
    for later in ("03-sft", "04-preference", "05-dpo", "06-eval"):
        shutil.rmtree(run / later)
    before, paid = _finished_stages(run), len(endpoint.calls)
    step = random.Random(SEED).choice(range(1, 4))
    kill_when(cli(_args(run, endpoint.url), log), lambda: (run / "03-sft" / "checkpoints" / f"step={step}.ckpt").is_file(), log)
    assert '"running"' in (run / "03-sft" / "stage.json").read_text()
    killed = torch.load(run / "03-sft" / "checkpoints" / "last.ckpt", weights_only=False)
    finish(cli(_args(run, endpoint.url), log), log)
    return run, log, before, killed, endpoint.calls[:paid], endpoint.calls[paid:]


@pytest.mark.slow
def test_pipeline_killed_in_sft_resumes_from_its_checkpoint_and_redoes_nothing(uninterrupted, killed_in_sft):
    run, log, before, killed, earlier, later = killed_in_sft
    after = _finished_stages(run)
    assert {k: after[k] for k in before} == before  # data and teacher stages untouched
    assert set(after) == {f.name for f in run.glob("0*-*")} and (run / "06-eval" / "report.html").is_file()
    assert "03-sft: interrupted earlier, resuming" in log.read_text()
    teacher = {c.digest for c in earlier if "inlineData" in json.dumps(c.body)}  # the mask-carrying requests
    assert teacher and not any(c.digest in teacher for c in later)  # no teacher answer paid again

    step = killed["global_step"]
    same_step = torch.load(uninterrupted / "03-sft" / "checkpoints" / f"step={step}.ckpt", weights_only=False)
    _assert_same_tensors(killed["optimizer_states"][0]["state"], same_step["optimizer_states"][0]["state"])
    last = torch.load(run / "03-sft" / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 5 and last["lr_schedulers"][0]["last_epoch"] == 5
    assert all(int(s["step"]) == 5 for s in last["optimizer_states"][0]["state"].values())  # continued, not restarted
    history = json.loads((run / "03-sft" / "metrics.json").read_text())["train_loss"]
    whole = json.loads((uninterrupted / "03-sft" / "metrics.json").read_text())["train_loss"]
    assert [s for s, _ in history] == list(range(1, 6))  # the whole stage's record, each step once
    assert [loss for _, loss in history] == pytest.approx([loss for _, loss in whole], rel=1e-5)


@pytest.mark.slow
def test_sft_resumed_mid_epoch_ends_with_the_uninterrupted_weights(uninterrupted, killed_in_sft):
    run = killed_in_sft[0]
    last = torch.load(run / "03-sft" / "checkpoints" / "last.ckpt", weights_only=False)
    ref = torch.load(uninterrupted / "03-sft" / "checkpoints" / "last.ckpt", weights_only=False)
    _assert_same_tensors(last["state_dict"], ref["state_dict"])

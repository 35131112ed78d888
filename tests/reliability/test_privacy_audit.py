"""The whole pipeline with every Gemini backend (teacher, pair selection, judge) pointed at a fake endpoint.

Every byte the real ``google-genai`` client sent is inspected at the fake: image parts are the
binary masks of the records they were sent for, and nothing carries frame pixels, file paths,
procedure or frame identifiers, or the key (which travels in the header only). ``cme-vlm audit``
passes on the run and fails on tampered copies; W&B holds no image; the key is in no file.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest
from fake_gemini import FakeGemini, audited_requests
from PIL import Image

from cme_vlm import atomic, cli
from cme_vlm.anatomy import Anatomy
from cme_vlm.config import load_config
from cme_vlm.config_files import REPO_ROOT
from cme_vlm.data.records import load_dataset, raw_images
from cme_vlm.teacher.request import encode_mask, mask_array

from .conftest import (
    GEMINI_EVERYWHERE,
    KEY,
    KEY_ENV,
    TINY,
    finish,
    gemini_overrides,
    schema_answer,
)

AUDIT_LOGS = ("02-teacher/audit.jsonl", "04-preference/audit.jsonl", "06-eval/judge_audit.jsonl")


@pytest.fixture(scope="module")
def gemini_run(tmp_path_factory):
    """(run folder, every request the fake received, the pipeline's console log)."""
    from .conftest import cli as run_cli

    folder = tmp_path_factory.mktemp("privacy")
    run, log = folder / "run", folder / "log"
    with FakeGemini(answer=schema_answer) as fake:
        args = ["run", "--config", str(REPO_ROOT / "experiments" / "demo.yaml"), "--run-dir", str(run), *TINY,
                *GEMINI_EVERYWHERE, *gemini_overrides(fake.url), "wandb.mode=offline", "wandb.allow_image_upload=false",
                "wandb.judge_subset=2"]
        finish(run_cli(args, log), log)
        calls = list(fake.calls)
    return run, calls, log


def _parts(call) -> list[bytes]:
    import base64

    return [base64.urlsafe_b64decode(p["inlineData"]["data"].replace("+", "-").replace("/", "_"))
            for c in call.body["contents"] for p in c["parts"] if "inlineData" in p]


def _purpose(call) -> str:
    props = call.body["generationConfig"]["responseJsonSchema"]["properties"]
    return "pair_selection" if "accepted" in props else "judge" if "clinical" in props else "teacher"


@pytest.mark.slow
def test_every_sent_byte_is_text_or_its_records_mask(gemini_run):
    run, calls, _ = gemini_run
    ds = load_dataset(run / "01-data")
    anatomy = Anatomy(load_config().anatomy)
    masks: dict[bytes, set[str]] = {}
    for row in ds:
        masks.setdefault(encode_mask(mask_array(row["mask"])), set()).add(anatomy.display(row["structure"]))
    overlays = {r["overlay"]["bytes"] for r in raw_images(ds)}
    frames_dir = run / "00-frames"
    frame_files = {p.read_bytes() for p in frames_dir.rglob("*.png")}
    names = sorted({*ds["procedure"], *ds["frame"], *(Path(f).name for f in ds["frame"]), *(Path(f).stem for f in ds["frame"])},
                   key=len, reverse=True)
    identifier = re.compile(r"(?<![A-Za-z0-9])(?:" + "|".join(map(re.escape, names)) + r")(?![A-Za-z0-9])")
    purposes = [_purpose(c) for c in calls]
    assert {"teacher", "pair_selection", "judge"} <= set(purposes)
    for call, purpose in zip(calls, purposes):
        assert call.headers.get("x-goog-api-key") == KEY
        body = json.dumps(call.body)
        assert KEY not in body and KEY not in call.path
        assert str(run) not in body and "/tmp" not in body and ".png" not in body
        assert not identifier.search(body), identifier.search(body).group(0)
        parts = _parts(call)
        assert len(parts) == (1 if purpose == "teacher" else 0)  # judges get text only
        for data in parts:
            assert data not in overlays and data not in frame_files
            image = Image.open(io.BytesIO(data))
            assert image.mode == "1" and image.size == (224, 224)  # one bit a pixel: no frame pixel fits in it
            structures = masks[data]  # KeyError: not the encoding of any record's mask
            assert any(f"Structure: {s}" in body for s in structures), (structures, body[:300])
    teacher_parts = [p for c, purpose in zip(calls, purposes) if purpose == "teacher" for p in _parts(c)]
    assert set(teacher_parts) == set(masks)  # every record's mask went out, nothing else


@pytest.mark.slow
def test_audit_passes_on_the_run_and_fails_on_tampered_copies(gemini_run, tmp_path, monkeypatch, capsys):
    run, calls, _ = gemini_run
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setattr(cli.console, "width", 100_000)
    audit = ["audit", "--run-dir", str(run), f"teacher.gemini.api_key_env={KEY_ENV}"]
    assert cli.main(audit) == 0
    report = json.loads((run / "privacy_audit.json").read_text())
    logged = sum(len(audited_requests(run / name)) for name in AUDIT_LOGS)
    assert report["verdict"] == "pass" and logged == len(calls) == report["requests"]
    assert report["sections"] == len(AUDIT_LOGS)  # one run, one section in each log

    ds = load_dataset(run / "01-data")
    other_mask = encode_mask(mask_array(ds[1]["mask"]))
    for tamper in ("mask", "frame", "key"):
        copy = tmp_path / tamper
        shutil.copytree(run, copy)
        log = copy / "02-teacher" / "audit.jsonl"
        lines = atomic.read_jsonl(log)
        first = next(i for i, line in enumerate(lines) if line.get("record_id") == ds[0]["id"])
        if tamper == "mask":
            import hashlib

            lines[first]["parts"][0]["sha256"] = hashlib.sha256(other_mask).hexdigest()
        elif tamper == "frame":
            lines[first]["text"] += f"\nSee {Path(ds[0]['frame']).name}."
        else:
            (copy / "03-sft" / "notes.txt").write_text(f"export {KEY_ENV}={KEY}\n")
        log.write_text("".join(json.dumps(line) + "\n" for line in lines))
        capsys.readouterr()
        assert cli.main(["audit", "--run-dir", str(copy), f"teacher.gemini.api_key_env={KEY_ENV}"]) == 2, tamper
        err = capsys.readouterr().err
        assert "privacy audit" in err and "failed" in err, err
        assert json.loads((copy / "privacy_audit.json").read_text())["verdict"] == "fail"


@pytest.mark.slow
def test_no_image_in_wandb_and_no_key_anywhere(gemini_run):
    run, _, log = gemini_run
    wandb_runs = sorted(run.rglob("offline-run-*"))
    assert wandb_runs, "the run made no offline W&B run to inspect"
    for folder in wandb_runs:
        assert not list(folder.rglob("media/images")) and not list(folder.rglob("*.png"))
        for f in folder.rglob("*.wandb"):
            assert b"\x89PNG" not in f.read_bytes()
    for path in [log, *(p for p in run.rglob("*") if p.is_file())]:
        assert KEY.encode() not in path.read_bytes(), f"{path} holds the API key"


"""The privacy guard refuses, before anything is sent, every part that is not the record's own mask."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
from fake_gemini import FakeGemini
from PIL import Image, PngImagePlugin

from cme_vlm.anatomy import Anatomy
from cme_vlm.errors import PrivacyError
from cme_vlm.teacher.backend import ANSWER_SCHEMA
from cme_vlm.teacher.gemini import GeminiClient
from cme_vlm.teacher.privacy import PrivacyGuard, text_problems
from cme_vlm.teacher.request import build_teacher_request, encode_mask, png_chunks

from .conftest import frame_and_mask, make_records


@pytest.fixture
def request_pair(cfg):
    ds = make_records(2)
    anatomy = Anatomy(cfg.anatomy)
    return [build_teacher_request(ds[i], anatomy).outgoing(45, 110) for i in range(2)]


def _png(image: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def test_encoded_mask_is_one_bit_without_metadata_and_round_trips():
    _, mask = frame_and_mask(3)
    data = encode_mask(mask)
    assert [kind for kind, _ in png_chunks(data)] == [b"IHDR", b"IDAT", b"IEND"]
    image = Image.open(io.BytesIO(data))
    assert image.mode == "1" and image.info == {}
    assert np.array_equal(np.asarray(image), mask)


def test_the_record_mask_passes(request_pair):
    PrivacyGuard().check(request_pair[0])


def _bad_parts(request):
    frame, mask = frame_and_mask(0)
    grey = (np.asarray(Image.fromarray(frame).convert("L")) // 2 + 10).astype(np.uint8)
    info = PngImagePlugin.PngInfo()
    info.add_text("Source", "proc000/frame00000.png")
    mask_l = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    return {
        "rgb frame": (_png(Image.fromarray(frame)), "mode RGB"),
        "grey non-binary": (_png(Image.fromarray(grey, mode="L")), "levels"),
        "tEXt chunk": (_png(mask_l, pnginfo=info), "tEXt"),
        "other record's mask": (encode_mask(frame_and_mask(1)[1]), "not the encoding"),
        "0/255 mask, different bytes": (_png(mask_l), "not the encoding"),
    }


@pytest.mark.parametrize("case", ["rgb frame", "grey non-binary", "tEXt chunk", "other record's mask", "0/255 mask, different bytes"])
def test_bad_image_parts_are_refused_before_sending(request_pair, gemini_cfg, tmp_path, case):
    data, reason = _bad_parts(request_pair[0])[case]
    bad = dataclasses.replace(request_pair[0], masks=(data,))
    with FakeGemini() as fake:
        gemini_cfg.teacher.gemini.base_url = fake.url
        client = GeminiClient(gemini_cfg.teacher.gemini, tmp_path / "j.jsonl", tmp_path / "a.jsonl")
        with pytest.raises(PrivacyError, match=reason):
            client.call(bad, ANSWER_SCHEMA)
    assert fake.calls == []
    assert not (tmp_path / "a.jsonl").exists() or (tmp_path / "a.jsonl").read_text() == ""


def test_extra_field_and_identifiers_are_refused(request_pair, gemini_cfg, tmp_path):
    base = request_pair[0]
    extra = dataclasses.replace(base, fields={**base.fields, "frame_file": "frame00000"})
    leaky = dataclasses.replace(base, fields={**base.fields, "prompt": f"What is in {base.context.procedure}?"})
    path = dataclasses.replace(base, fields={**base.fields, "prompt": "Look at /data/clinic/case7/img.png"})
    with FakeGemini() as fake:
        gemini_cfg.teacher.gemini.base_url = fake.url
        client = GeminiClient(gemini_cfg.teacher.gemini, tmp_path / "j.jsonl", tmp_path / "a.jsonl")
        for request, reason in ((extra, "whitelist"), (leaky, "identifier 'proc000'"), (path, "file path")):
            with pytest.raises(PrivacyError, match=reason):
                client.call(request, ANSWER_SCHEMA)
    assert fake.calls == []


def test_text_check_spares_ordinary_prose():
    from cme_vlm.teacher.request import RecordContext

    ctx = RecordContext("abc", "proc001", "proc001/frame00042.png")
    assert text_problems("Left/right and/or 0.6 percent, about 1/2 of the frame.", ctx) == []
    assert text_problems("seen in frame00042 earlier", ctx)


def test_audit_log_holds_digests_and_text_but_not_the_key(request_pair, gemini_cfg, tmp_path):
    with FakeGemini() as fake:
        gemini_cfg.teacher.gemini.base_url = fake.url
        client = GeminiClient(gemini_cfg.teacher.gemini, tmp_path / "j.jsonl", tmp_path / "a.jsonl")
        client.generate_json(request_pair[0], ANSWER_SCHEMA)
    audit = (tmp_path / "a.jsonl").read_text()
    header, line = (json.loads(x) for x in audit.splitlines())
    assert header["section"]["model"] == gemini_cfg.teacher.gemini.model  # the section this run appended
    assert line["record_id"] == request_pair[0].context.record_id
    assert line["parts"][0]["size"] == len(request_pair[0].masks[0])
    assert "inferior mesenteric vein" in line["text"]
    assert "test-key-not-a-secret" not in audit

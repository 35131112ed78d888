"""The privacy guard and audit log: nothing leaves the machine unchecked or unrecorded.

Every outgoing request passes ``PrivacyGuard.check`` before a byte is sent. It refuses fields
outside the purpose's whitelist, text that names the record's procedure or frame or looks like
a file path, and any image part that is not exactly the 1-bit, metadata-free encoding of the
current record's mask. ``AuditLog`` appends one JSONL line per sent request, in one section per run.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
import time
from pathlib import Path, PurePath
from typing import Any

import numpy as np
from PIL import Image

from cme_vlm import atomic
from cme_vlm.errors import PrivacyError
from cme_vlm.teacher.request import (
    CRITICAL_CHUNKS,
    OutgoingRequest,
    RecordContext,
    encode_mask,
    png_chunks,
)

# The text fields each kind of request may carry; anything else is refused.
FIELD_WHITELIST: dict[str, frozenset[str]] = {
    "teacher": frozenset({"structure", "facts", "side", "phase", "prompt", "geometry"}),
    "judge": frozenset({"structure", "side", "phase", "prompt", "region", "reference_answer", "candidate_answer"}),
    "pair_selection": frozenset({"structure", "facts", "side", "phase", "prompt", "reference", "candidates"}),
}

_PATH_PATTERNS = (
    re.compile(r"(?<![\w.])/(?:[\w.-]+/)+[\w.-]*"),  # /abs/path/...
    re.compile(r"\b[A-Za-z]:[\\/]"),  # C:\ or C:/
    re.compile(r"~[\\/]"),
    re.compile(r"\b[\w-]+\.(?:png|jpe?g|bmp|tiff?|gif|webp|mp4|avi|mkv|mov|npy|npz|dcm|nii|csv|jsonl?|ya?ml|parquet)\b", re.I),
    re.compile(r"\b[\w.-]+\\[\w.-]+"),  # dir\file
)


def identifier_tokens(context: RecordContext) -> list[str]:
    """The procedure id, frame id and the frame's file name and stem: none may be sent."""
    tokens = {context.procedure, context.frame}
    if context.frame:
        name = PurePath(context.frame.replace("\\", "/")).name
        tokens |= {name, PurePath(name).stem}
    return sorted(t for t in tokens if t.strip())


def text_problems(text: str, context: RecordContext) -> list[str]:
    """Why ``text`` must not be sent: identifiers of its record, or anything like a file path."""
    problems = []
    for token in identifier_tokens(context):
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(token)}(?![A-Za-z0-9])", text, re.I):
            problems.append(f"the text contains the record's local identifier '{token}'")
    for pattern in _PATH_PATTERNS:
        hit = pattern.search(text)
        if hit:
            problems.append(f"the text contains something like a file path: '{hit.group(0)}'")
    return problems


def mask_part_problem(data: bytes, context: RecordContext) -> str | None:
    """Why an image part must not be sent, or None when it is the current record's mask."""
    try:
        chunks = png_chunks(data)
    except ValueError as e:
        return f"the image part is not a valid PNG ({e})"
    extra = sorted({kind.decode("latin-1") for kind, _ in chunks if kind not in CRITICAL_CHUNKS})
    if extra:
        return f"the PNG carries metadata or ancillary chunks ({', '.join(extra)})"
    image = Image.open(io.BytesIO(data))
    if image.mode not in ("1", "L"):
        return f"the image part has mode {image.mode}; only a single-channel binary mask may be sent"
    values = np.unique(np.asarray(image, dtype=np.uint8))
    if image.mode == "L" and not set(values.tolist()) <= {0, 255}:
        return f"the image part is greyscale with {values.size} levels, not a binary 0/255 mask"
    if context.mask is None:
        return "the request carries an image but its record has no mask"
    if data != encode_mask(context.mask):
        return f"the image part is not the encoding of the mask of record {context.record_id}"
    return None


class PrivacyGuard:
    """Checks an ``OutgoingRequest`` against its record; ``check`` raises ``PrivacyError``."""

    def check(self, request: OutgoingRequest) -> None:
        problems = self.problems(request)
        if problems:
            raise PrivacyError(
                f"refused to send the {request.purpose} request for record {request.context.record_id}: "
                + "; ".join(problems)
                + ". Nothing was sent. Only whitelisted text fields and the record's own binary mask may leave "
                "the machine; fix the code or data that put this into the request."
            )

    def problems(self, request: OutgoingRequest) -> list[str]:
        allowed = FIELD_WHITELIST.get(request.purpose)
        if allowed is None:
            return [f"unknown request purpose '{request.purpose}' (known: {', '.join(FIELD_WHITELIST)})"]
        problems = [f"field '{name}' is not on the {request.purpose} whitelist" for name in request.fields if name not in allowed]
        problems += [f"field '{n}' is not text" for n, v in request.fields.items() if not isinstance(v, str)]
        if not problems:
            problems += text_problems(request.system + "\n" + request.user_text(), request.context)
        for data in request.masks:
            problem = mask_part_problem(data, request.context) if isinstance(data, bytes) else "an image part is not bytes"
            if problem:
                problems.append(problem)
        return problems


def part_digest(data: bytes) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "mime_type": "image/png"}


SECTION_KEY = "section"
SECTION_FIELDS = frozenset({"started", "model", "endpoint", "settings", "gemini_config_sha256"})
REQUEST_FIELDS = frozenset({"time", "record_id", "purpose", "model", "attempt", "text", "text_sha256", "parts"})


class AuditLog:
    """Append-only JSONL record of every request sent: what left the machine, never the key.

    The file only grows. Each run that sends anything appends one section: a header line
    ``{"section": {"started": ..., <start_section fields>}}`` followed by one line per attempt.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._header: dict[str, Any] | None = None

    def start_section(self, model: str, endpoint: str, settings: dict[str, Any], gemini_config_sha256: str) -> None:
        """Open this run's section; its header goes out with the first request, so a run that sends nothing adds nothing."""
        header = {"started": _now(), "model": model, "endpoint": endpoint, "settings": settings,
                  "gemini_config_sha256": gemini_config_sha256}
        with self._lock:
            self._header = {SECTION_KEY: header}

    def record(self, request: OutgoingRequest, model: str, attempt: int) -> None:
        text = request.system + "\n" + request.user_text()
        line = {
            "time": _now(),
            "record_id": request.context.record_id,
            "purpose": request.purpose,
            "model": model,
            "attempt": attempt,
            "text": text,
            "text_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "parts": [part_digest(m) for m in request.masks],
        }
        with self._lock:
            if self._header is not None:
                atomic.append_jsonl(self.path, self._header)
                self._header = None
            atomic.append_jsonl(self.path, line)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")

"""The guarded Gemini client used by the teacher, the judge and pair selection.

``GeminiClient.call`` runs every request through the ``PrivacyGuard``, answers from the response
journal when it can, and otherwise sends it with the real ``google-genai`` client under a
concurrency and requests-per-minute limit, with our own retries (exponential back-off with
jitter, honouring Retry-After) and an audit line per attempt. The SDK's retries are disabled so
that every paid attempt is counted and audited here.
"""

from __future__ import annotations

import email.utils
import importlib
import importlib.util
import json
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from cme_vlm.errors import TeacherError
from cme_vlm.schema import GeminiConfig
from cme_vlm.teacher.cache import Journal, JournalEntry
from cme_vlm.teacher.privacy import AuditLog, PrivacyGuard
from cme_vlm.teacher.request import OutgoingRequest

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
FATAL_STATUS = {401: "the API key was rejected", 403: "the API key lacks permission", 404: "the model was not found"}
# Failures that asking again would not change are journalled; transient ones are retried on a re-run.
TRANSIENT_PREFIXES = ("http_", "timeout", "network")
# google-genai sends through httpx or its fork httpx2, whichever is installed.
_HTTP_LIBS = [importlib.import_module(m) for m in ("httpx", "httpx2") if importlib.util.find_spec(m)]
TIMEOUT_ERRORS = tuple(lib.TimeoutException for lib in _HTTP_LIBS)
TRANSPORT_ERRORS = tuple(lib.TransportError for lib in _HTTP_LIBS)


@dataclass(frozen=True)
class Reply:
    """The outcome of one request: parsed ``data`` or a ``failure`` reason; ``cached`` if from the journal."""

    data: dict[str, Any] | None
    failure: str
    cached: bool
    model: str
    time: str


class TeacherFailure(TeacherError):
    """A request finished without an answer (blocked, empty, malformed, or out of retries)."""

    def __init__(self, reason: str, record_id: str):
        super().__init__(f"no answer for record {record_id}: {reason}")
        self.reason = reason


class RateLimiter:
    """Spaces request starts at least ``60 / per_minute`` seconds apart (0: no limit)."""

    def __init__(self, per_minute: int):
        self.interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        time.sleep(max(0.0, slot - now))


def retry_after_s(error: genai_errors.APIError) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), if the server sent one."""
    response = getattr(error, "response", None)
    value = response.headers.get("retry-after") if response is not None and hasattr(response, "headers") else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def parse_response(response: types.GenerateContentResponse, schema: dict[str, Any]) -> tuple[dict | None, str]:
    """(data, "") for a usable structured answer, else (None, reason)."""
    if not response.candidates:
        feedback = response.prompt_feedback
        if feedback is not None and feedback.block_reason is not None:
            return None, f"blocked:{feedback.block_reason.value}"
        return None, "empty"
    finish = response.candidates[0].finish_reason
    if finish is not None and finish not in (types.FinishReason.STOP, types.FinishReason.FINISH_REASON_UNSPECIFIED):
        return None, "truncated" if finish == types.FinishReason.MAX_TOKENS else f"blocked:{finish.value}"
    parts = response.candidates[0].content.parts if response.candidates[0].content else None
    text = "".join(p.text or "" for p in parts or [])
    if not text.strip():
        return None, "empty"
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None, "malformed"
    if not isinstance(data, dict):
        return None, "malformed"
    missing = [k for k in schema.get("required", []) if k not in data]
    return (None, "schema") if missing else (data, "")


class GeminiClient:
    """The one remote client: guard, journal, rate limits, retries and audit around ``google-genai``."""

    def __init__(self, cfg: GeminiConfig, journal: Journal | str | Path, audit: AuditLog | str | Path,
                 guard: PrivacyGuard | None = None, seed: int = 0):
        key = os.environ.get(cfg.api_key_env, "")
        if not key:
            raise TeacherError(
                f"the Gemini backend needs an API key in the environment variable {cfg.api_key_env}, which is not set. "
                f"Export it (export {cfg.api_key_env}=...), or use the offline backend (teacher=offline)."
            )
        self.cfg = cfg
        self.journal = journal if isinstance(journal, Journal) else Journal(journal)
        self.audit = audit if isinstance(audit, AuditLog) else AuditLog(audit)
        self.guard = guard or PrivacyGuard()
        self._limiter = RateLimiter(cfg.requests_per_minute)
        self._slots = threading.BoundedSemaphore(max(1, cfg.concurrency))
        self._rng = random.Random(seed)
        self._client = genai.Client(
            api_key=key,
            http_options=types.HttpOptions(
                base_url=cfg.base_url or None,
                timeout=max(1, int(cfg.timeout_s * 1000)),
                retry_options=types.HttpRetryOptions(attempts=1),
            ),
        )

    @property
    def model(self) -> str:
        return self.cfg.model

    def settings(self) -> dict[str, Any]:
        return {"temperature": self.cfg.temperature, "max_output_tokens": self.cfg.max_output_tokens}

    def generate_json(self, request: OutgoingRequest, schema: dict[str, Any]) -> dict[str, Any]:
        """The parsed structured answer; raises ``TeacherFailure`` (with ``reason``) when there is none."""
        reply = self.call(request, schema)
        if reply.data is None:
            raise TeacherFailure(reply.failure, request.context.record_id)
        return reply.data

    def call(self, request: OutgoingRequest, schema: dict[str, Any]) -> Reply:
        """Guard, then journal, then the remote model; ``PrivacyError`` means nothing was sent."""
        self.guard.check(request)
        key = request.content_key(self.model, self.settings(), schema)
        entry = self.journal.get(key)
        if entry is not None:
            return Reply(entry.data, entry.failure, True, entry.model, entry.time)
        with self._slots:
            data, failure = self._send_with_retries(request, schema)
        entry = JournalEntry(key, self.model, request.context.record_id, request.purpose, data, failure)
        if not failure.startswith(TRANSIENT_PREFIXES):
            self.journal.put(entry)
        return Reply(data, failure, False, entry.model, entry.time)

    def _backoff_s(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2**attempt)
        delay *= 0.5 + 0.5 * self._rng.random()  # jitter, so parallel workers do not retry in step
        return max(delay, min(retry_after, self.cfg.backoff_max_s)) if retry_after is not None else delay

    def _send_with_retries(self, request: OutgoingRequest, schema: dict[str, Any]) -> tuple[dict | None, str]:
        failure = ""
        for attempt in range(self.cfg.max_retries + 1):
            self._limiter.wait()
            self.audit.record(request, self.model, attempt)
            retry_after = None
            try:
                return parse_response(self._send(request, schema), schema)
            except genai_errors.APIError as e:
                if e.code in FATAL_STATUS:
                    raise TeacherError(
                        f"Gemini answered {e.code}: {FATAL_STATUS[e.code]} (model '{self.model}', key from "
                        f"{self.cfg.api_key_env}). Check the key and teacher.gemini.model."
                    ) from None
                failure = f"http_{e.code}"
                if e.code not in RETRYABLE_STATUS:
                    return None, failure
                retry_after = retry_after_s(e)
            except genai_errors.UnknownApiResponseError:
                return None, "malformed"
            except TIMEOUT_ERRORS:
                failure = "timeout"
            except TRANSPORT_ERRORS:
                failure = "network"
            if attempt < self.cfg.max_retries:
                time.sleep(self._backoff_s(attempt, retry_after))
        return None, failure

    def _send(self, request: OutgoingRequest, schema: dict[str, Any]) -> types.GenerateContentResponse:
        parts = [types.Part.from_text(text=request.user_text())]
        parts += [types.Part.from_bytes(data=png, mime_type="image/png") for png in request.masks]
        return self._client.models.generate_content(
            model=self.model,
            contents=[types.Content(role="user", parts=parts)],
            config=types.GenerateContentConfig(
                system_instruction=request.system,
                temperature=self.cfg.temperature,
                max_output_tokens=self.cfg.max_output_tokens,
                response_mime_type="application/json",
                response_json_schema=schema,
            ),
        )

"""The guarded Gemini client used by the teacher, the judge and pair selection.

``GeminiClient.call`` runs every request through the ``PrivacyGuard``, answers from the response
journal when it can, and otherwise sends it with the real ``google-genai`` client under a
concurrency and requests-per-minute limit, with our own retries (exponential back-off with
jitter, honouring Retry-After) and an audit line per attempt. The SDK's retries are disabled so
that every paid attempt is counted and audited here. What a failed attempt means (retry, journal
as final, or ask again on a re-run) is decided by ``cme_vlm.teacher.outcome`` alone; a status no
retry can fix (a rejected key, a bad request) stops the stage with a ``TeacherError``.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import random
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx2
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from cme_vlm.errors import TeacherError

try:
    import httpx
except ImportError:  # google-genai itself needs only httpx2
    httpx = None
from cme_vlm.schema import GeminiConfig
from cme_vlm.teacher.cache import Journal, JournalEntry
from cme_vlm.teacher.outcome import (
    BLOCKED,
    BODY,
    EMPTY,
    HTTP,
    NETWORK,
    SCHEMA,
    TIMEOUT,
    Failure,
)
from cme_vlm.teacher.privacy import AuditLog, PrivacyGuard
from cme_vlm.teacher.request import OutgoingRequest

RETRYABLE_STATUS = frozenset({408, 429})  # and every 5xx
REFUSED_HINTS = {
    400: "the request is invalid for model '{model}': check teacher.gemini.model and teacher.gemini.max_output_tokens",
    401: "the API key in {key_env} was rejected: export a valid key",
    403: "the API key in {key_env} lacks permission for model '{model}'",
    404: "model '{model}' was not found: check teacher.gemini.model and teacher.gemini.base_url",
}
# Finish reasons by which the model or its filter refused to answer; other stops are retried as schema failures.
REFUSALS = frozenset({
    types.FinishReason.SAFETY, types.FinishReason.RECITATION, types.FinishReason.BLOCKLIST,
    types.FinishReason.PROHIBITED_CONTENT, types.FinishReason.SPII, types.FinishReason.IMAGE_SAFETY,
    types.FinishReason.IMAGE_PROHIBITED_CONTENT, types.FinishReason.IMAGE_RECITATION, types.FinishReason.MODEL_ARMOR,
})
ANSWERED = (types.FinishReason.STOP, types.FinishReason.FINISH_REASON_UNSPECIFIED, None)
# google-genai sends through its dependency httpx2 (a fork of httpx), or through httpx where that is installed.
_HTTP_LIBS = [lib for lib in (httpx, httpx2) if lib is not None]
TIMEOUT_ERRORS = tuple(lib.TimeoutException for lib in _HTTP_LIBS)
TRANSPORT_ERRORS = tuple(lib.TransportError for lib in _HTTP_LIBS)


@dataclass(frozen=True)
class Reply:
    """The outcome of one request: parsed ``data`` or a ``failure``; ``cached`` if from the journal."""

    data: dict[str, Any] | None
    failure: Failure | None
    cached: bool
    model: str
    time: str


class TeacherFailure(TeacherError):
    """A request finished without an answer; ``failure.final`` says whether a re-run asks again."""

    def __init__(self, failure: Failure, record_id: str, journal: Path):
        if failure.final:
            what = f"final: asking again would not change it; the outcome is kept in {journal}"
        else:
            what = f"transient, out of retries: answers so far are kept in {journal} and a re-run asks again"
        super().__init__(f"no answer for record {record_id}: {failure.reason} ({what})")
        self.failure = failure


class IncompleteBody(Exception):
    """A 200 response whose body is not a complete JSON object (cut off, or a proxy's HTML page)."""


def _require_json_object(response: Any) -> None:
    """httpx response hook: refuse a 200 body that is not a JSON object before google-genai parses it."""
    if response.status_code != 200:
        return  # google-genai raises APIError for these
    response.read()
    try:
        body = json.loads(response.content)
    except ValueError:
        raise IncompleteBody("not_json") from None
    if not isinstance(body, dict):
        raise IncompleteBody("not_an_object")


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


def schema_failure(data: Any, schema: dict[str, Any]) -> Failure | None:
    """Why ``data`` is not what ``schema`` asks for, named by the path and the rule it breaks."""
    error = best_match(Draft202012Validator(schema).iter_errors(data))
    if error is None:
        return None
    return Failure(SCHEMA, f"{'/'.join(map(str, error.absolute_path)) or 'answer'} {error.validator}")


def parse_response(response: types.GenerateContentResponse, schema: dict[str, Any]) -> tuple[dict | None, Failure | None]:
    """(data, None) for a usable structured answer, else (None, why not)."""
    if not response.candidates:
        feedback = response.prompt_feedback
        if feedback is not None and feedback.block_reason is not None:
            return None, Failure(BLOCKED, feedback.block_reason.value)
        return None, Failure(EMPTY, "no_candidates")
    candidate = response.candidates[0]
    if candidate.finish_reason in REFUSALS:
        return None, Failure(BLOCKED, candidate.finish_reason.value)
    if candidate.finish_reason not in ANSWERED:
        return None, Failure(SCHEMA, candidate.finish_reason.value)  # e.g. cut off at max_output_tokens
    parts = candidate.content.parts if candidate.content else None
    text = "".join(p.text or "" for p in parts or [])
    if not text.strip():
        return None, Failure(EMPTY, "no_text")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None, Failure(SCHEMA, "not_json")
    failure = schema_failure(data, schema)
    return (None, failure) if failure else (data, None)


def config_digest(cfg: GeminiConfig) -> str:
    """SHA-256 of the client's settings (the key's variable name, never the key)."""
    return hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()


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
        self.audit.start_section(model=cfg.model, endpoint=cfg.base_url or "google", settings=self.settings(),
                                 gemini_config_sha256=config_digest(cfg))
        self.guard = guard or PrivacyGuard()
        self._limiter = RateLimiter(cfg.requests_per_minute)
        self._slots = threading.BoundedSemaphore(max(1, cfg.concurrency))
        self._rng = random.Random(seed)
        self._refusal: TeacherError | None = None
        self._client = genai.Client(
            api_key=key,
            http_options=types.HttpOptions(
                base_url=cfg.base_url or None,
                timeout=max(1, int(cfg.timeout_s * 1000)),
                retry_options=types.HttpRetryOptions(attempts=1),
                client_args={"event_hooks": {"response": [_require_json_object]}},
            ),
        )

    @property
    def model(self) -> str:
        return self.cfg.model

    def settings(self) -> dict[str, Any]:
        return {"temperature": self.cfg.temperature, "max_output_tokens": self.cfg.max_output_tokens}

    def generate_json(self, request: OutgoingRequest, schema: dict[str, Any]) -> dict[str, Any]:
        """The parsed structured answer; raises ``TeacherFailure`` (with its ``failure``) when there is none."""
        reply = self.call(request, schema)
        if reply.failure is not None:
            raise TeacherFailure(reply.failure, request.context.record_id, self.journal.path)
        return reply.data

    def call(self, request: OutgoingRequest, schema: dict[str, Any]) -> Reply:
        """Guard, then journal, then the remote model; ``PrivacyError`` means nothing was sent."""
        self.guard.check(request)
        key = request.content_key(self.model, self.settings(), schema)
        entry = self.journal.get(key)
        if entry is not None:
            failure = Failure.from_reason(entry.failure) if entry.failure else None
            return Reply(entry.data, failure, True, entry.model, entry.time)
        if self._refusal is not None:
            raise TeacherError(str(self._refusal))  # a status no retry can fix came back: send nothing more
        with self._slots:
            data, failure = self._send_with_retries(request, schema)
        entry = JournalEntry(key, self.model, request.context.record_id, request.purpose, data,
                             failure.reason if failure else "")
        if entry.final:
            self.journal.put(entry)
        return Reply(data, failure, False, entry.model, entry.time)

    def _backoff_s(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2**attempt)
        delay *= 0.5 + 0.5 * self._rng.random()  # jitter, so parallel workers do not retry in step
        return max(delay, min(retry_after, self.cfg.backoff_max_s)) if retry_after is not None else delay

    def _send_with_retries(self, request: OutgoingRequest, schema: dict[str, Any]) -> tuple[dict | None, Failure | None]:
        """Attempts until an answer, a refusal or the last retry; the last attempt's failure is the outcome."""
        failure = None
        for attempt in range(self.cfg.max_retries + 1):
            if failure is not None:
                time.sleep(self._backoff_s(attempt - 1, failure.retry_after_s))
            self._limiter.wait()
            self.audit.record(request, self.model, attempt)
            data, failure = self._attempt(request, schema)
            if failure is None or not failure.retry_now:
                return data, failure
        return None, failure

    def _attempt(self, request: OutgoingRequest, schema: dict[str, Any]) -> tuple[dict | None, Failure | None]:
        try:
            response = self._send(request, schema)
        except genai_errors.APIError as e:
            if e.code in RETRYABLE_STATUS or 500 <= e.code < 600:
                return None, Failure(HTTP, str(e.code), retry_after_s(e))
            self._refusal = self._refused(e, request)
            raise self._refusal from None
        except IncompleteBody as e:
            return None, Failure(BODY, str(e))
        except TIMEOUT_ERRORS as e:
            return None, Failure(TIMEOUT, type(e).__name__)
        except TRANSPORT_ERRORS as e:
            return None, Failure(NETWORK, type(e).__name__)
        return parse_response(response, schema)

    def _refused(self, error: genai_errors.APIError, request: OutgoingRequest) -> TeacherError:
        hint = REFUSED_HINTS.get(error.code, "check teacher.gemini.base_url and the key in {key_env}")
        said = " ".join(str(error.message or error.status or "").split())[:200]
        return TeacherError(
            f"Gemini answered {error.code} ({said}) to the {request.purpose} request for record "
            f"{request.context.record_id}, which no retry can fix, so the stage stopped: "
            + hint.format(model=self.model, key_env=self.cfg.api_key_env)
            + f". Answers so far are kept in {self.journal.path}."
        )

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

"""The one rule for every remote call's failure: final (journalled, never asked again) or transient (asked again).

A failure is written ``kind:detail`` (``blocked:SAFETY``, ``schema:not_json``, ``http:503``). Final:
the model or its filter refused (``blocked``), or its answer failed the response schema on the last
of its retries (``schema``). Everything else is transient: timeouts, resets, 408/429/5xx, a 200 whose
body is not a complete JSON object, a 200 without candidates or text. The same rule reads the
journal, so a failure written by older code (``empty``, ``malformed``, ``schema`` without a detail,
none of them retried then) counts as transient and is asked again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BLOCKED = "blocked"  # the model or its safety filter refused: final at once
SCHEMA = "schema"  # the answer is not the JSON the schema asks for: retried, final when out of retries
HTTP = "http"  # 408, 429 or 5xx
TIMEOUT = "timeout"
NETWORK = "network"  # connection refused, reset or cut off
BODY = "body"  # a 200 whose body is not a complete JSON object (cut off, or a proxy's HTML page)
EMPTY = "empty"  # a 200 without candidates, or whose candidate has no text
FINAL_KINDS = frozenset({BLOCKED, SCHEMA})


@dataclass(frozen=True)
class Failure:
    """Why a request has no answer; ``retry_after_s`` is the server's Retry-After, for the back-off only."""

    kind: str
    detail: str
    retry_after_s: float | None = field(default=None, compare=False)

    @classmethod
    def from_reason(cls, reason: str) -> Failure:
        """The failure a journal's or summary's reason string names."""
        kind, _, detail = reason.partition(":")
        return cls(kind, detail)

    @property
    def reason(self) -> str:
        return f"{self.kind}:{self.detail}"

    @property
    def final(self) -> bool:
        """Asking again would not change it. Reasons without a detail come from older code, which never retried them."""
        return self.kind in FINAL_KINDS and bool(self.detail)

    @property
    def retry_now(self) -> bool:
        """Worth another attempt within this call: anything but a refusal."""
        return self.kind != BLOCKED

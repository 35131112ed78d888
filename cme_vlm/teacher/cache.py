"""The response journal: an append-only, fsynced JSONL cache keyed by the request's content.

A request with a final outcome (answered, or failed for a reason that asking again would not
change, ``cme_vlm.teacher.outcome``) is appended the moment it completes, so a re-run resumes where
the last one stopped and never pays twice; a crash (even ``kill -9``) loses at most the requests
that were in flight. Rows are never rewritten: a transient failure left by older code stays in the
file, is not counted as an answer, and the re-run's final outcome for its key is appended after it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cme_vlm import atomic
from cme_vlm.errors import DataError
from cme_vlm.teacher.outcome import Failure


@dataclass(frozen=True)
class JournalEntry:
    """A finished request: ``data`` (the parsed answer) or a ``failure`` reason, and when."""

    key: str
    model: str
    record_id: str
    purpose: str
    data: dict[str, Any] | None = None
    failure: str = ""
    time: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    @property
    def ok(self) -> bool:
        return self.data is not None and not self.failure

    @property
    def final(self) -> bool:
        """Answered, or failed for good: a re-run takes it from the journal instead of asking again."""
        return self.ok or Failure.from_reason(self.failure).final


class Journal:
    """Content-addressed journal of final outcomes, loaded from and appended to ``path``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            rows = atomic.read_jsonl(self.path)
        except ValueError as e:
            raise DataError(
                f"response journal '{self.path}' is damaged in the middle ({e}). "
                "Move it aside to start over (answers in it will be paid for again)."
            ) from e
        self._entries: dict[str, JournalEntry] = {}
        for entry in (JournalEntry(**row) for row in rows):
            if entry.final:
                self._entries.setdefault(entry.key, entry)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> JournalEntry | None:
        """The final outcome for ``key``, or None when it must be asked (again)."""
        with self._lock:
            return self._entries.get(key)

    def put(self, entry: JournalEntry) -> None:
        """Append and fsync a final outcome; the first one for a key wins, a later one is ignored."""
        if not entry.final:
            raise ValueError(f"journal entry for record {entry.record_id} is not final ({entry.failure}): ask it again")
        with self._lock:
            if entry.key in self._entries:
                return
            atomic.append_jsonl(self.path, entry.__dict__)
            self._entries[entry.key] = entry

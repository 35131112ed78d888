"""The teacher backend interface and the Gemini teacher built on the guarded client."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cme_vlm.anatomy import Anatomy
from cme_vlm.schema import TeacherBackend as BackendName
from cme_vlm.schema import TeacherConfig
from cme_vlm.teacher.cache import Journal
from cme_vlm.teacher.gemini import GeminiClient
from cme_vlm.teacher.privacy import AuditLog
from cme_vlm.teacher.request import TeacherRequest

ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "description": "the expert answer, plain prose"}},
    "required": ["answer"],
}


@dataclass(frozen=True)
class TeacherResult:
    """An answer, or a failure reason with an empty answer; ``cached`` when it came from the journal."""

    answer: str
    failure: str
    cached: bool
    model: str
    time: str


class TeacherBackend(Protocol):
    """Anything that answers a ``TeacherRequest``."""

    model: str

    def answer(self, request: TeacherRequest) -> TeacherResult: ...


class GeminiTeacher:
    """The paper's teacher: Gemini with structured output, through the guarded client."""

    def __init__(self, cfg: TeacherConfig, client: GeminiClient):
        self.cfg = cfg
        self.client = client
        self.model = client.model

    def answer(self, request: TeacherRequest) -> TeacherResult:
        reply = self.client.call(request.outgoing(self.cfg.min_words, self.cfg.max_words), ANSWER_SCHEMA)
        text = str(reply.data["answer"]).strip() if reply.data else ""
        failure = reply.failure or ("" if text else "empty")
        return TeacherResult(text if not failure else "", failure, reply.cached, reply.model, reply.time)


def make_backend(cfg: TeacherConfig, anatomy: Anatomy, out: Path) -> TeacherBackend:
    """The configured backend, journalling to ``out/journal.jsonl`` and auditing to ``out/audit.jsonl``."""
    journal = Journal(out / "journal.jsonl")
    if cfg.backend == BackendName.gemini:
        client = GeminiClient(cfg.gemini, journal, AuditLog(out / "audit.jsonl"), seed=cfg.seed)
        return GeminiTeacher(cfg, client)
    from cme_vlm.teacher.offline import OfflineTeacher

    return OfflineTeacher(cfg, anatomy, journal)

"""The teacher backend interface (``TeacherBackend``, ``TeacherResult``) and the Gemini teacher on the guarded client.

The offline stand-in is ``cme_vlm.teacher.offline.OfflineTeacher``; the stage picks one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cme_vlm.schema import TeacherConfig
from cme_vlm.teacher.gemini import GeminiClient
from cme_vlm.teacher.outcome import SCHEMA, Failure
from cme_vlm.teacher.request import TeacherRequest

ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "description": "the expert answer, plain prose"}},
    "required": ["answer"],
}


@dataclass(frozen=True)
class TeacherResult:
    """An answer, or a failure reason (``cme_vlm.teacher.outcome``) and no answer; ``cached``: from the journal."""

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
        # A blank answer is journalled as answered, so asking again returns it: final, like any schema failure.
        failure = reply.failure or (None if text else Failure(SCHEMA, "blank_answer"))
        return TeacherResult(text if not failure else "", failure.reason if failure else "", reply.cached, reply.model,
                             reply.time)

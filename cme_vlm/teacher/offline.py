"""The offline knowledge-base teacher: a stand-in for Gemini that sends nothing anywhere.

It composes each answer from the anatomy registry's facts and the locally computed mask
geometry, in the shape the Gemini teacher is asked for: the first sentence names the structure,
then where it lies, then side-consistent significance, then a pitfall. Wording varies a little
(a few paraphrases per slot, seeded per record) so a small student can still learn the answers.
It is a stand-in for the paper's teacher, not a clinical source.
"""

from __future__ import annotations

import hashlib
import random

from cme_vlm.anatomy import Anatomy
from cme_vlm.data.geometry import MaskGeometry
from cme_vlm.schema import FactKind, TeacherConfig
from cme_vlm.teacher.backend import TeacherResult
from cme_vlm.teacher.cache import Journal, JournalEntry
from cme_vlm.teacher.request import TeacherRequest

MODEL_NAME = "offline-kb"

IDENTIFY = (
    "The highlighted structure is the {name}.",
    "The green overlay marks the {name}.",
    "The structure shown in green is the {name}.",
)
POSITION = (
    "It lies in the {where} of the view, {shape}.",
    "In this view it sits in the {where}, {shape}.",
    "It occupies the {where} of the image, {shape}.",
)
SIDE = (
    "In this {scene}, {fact}",
    "During {scene}, {fact}",
    "For a {scene} this matters: {fact}",
)
PITFALL = ("Pitfall: {fact}", "A common pitfall: {fact}", "Be careful here: {fact}")
ADVERBS = {"horizontal": "horizontally", "vertical": "vertically"}


def _lower_first(text: str) -> str:
    """Lower-case the first letter unless the first word is an acronym (IMV, CME)."""
    return text[0].lower() + text[1:] if len(text) > 1 and text[1].islower() else text


def _shape(geometry: MaskGeometry) -> str:
    size = f"about {geometry.area_fraction:.0%} of the frame"
    if geometry.orientation == "compact":
        return f"a compact area covering {size}"
    direction = ADVERBS.get(geometry.orientation, geometry.orientation.replace("oblique", "obliquely"))
    return f"running {direction} across {size}"


def _words(sentences: list[str]) -> int:
    return sum(len(s.split()) for s in sentences)


class OfflineTeacher:
    """Answers from the registry and the mask geometry; same interface as ``GeminiTeacher``."""

    model = MODEL_NAME

    def __init__(self, cfg: TeacherConfig, anatomy: Anatomy, journal: Journal):
        self.cfg = cfg
        self.anatomy = anatomy
        self.journal = journal

    def answer(self, request: TeacherRequest) -> TeacherResult:
        outgoing = request.outgoing(self.cfg.min_words, self.cfg.max_words)
        settings = {"seed": self.cfg.seed, "min_words": self.cfg.min_words, "max_words": self.cfg.max_words}
        key = outgoing.content_key(self.model, settings, {})
        entry = self.journal.get(key)
        cached = entry is not None
        if entry is None:
            entry = JournalEntry(key, self.model, request.context.record_id, "teacher", {"answer": self.compose(request)})
            self.journal.put(entry)
        return TeacherResult(entry.data["answer"], "", cached, self.model, entry.time)

    @staticmethod
    def _facts(request: TeacherRequest, kinds: tuple[FactKind, ...]) -> list[str]:
        """The request's facts (those true for the record's side and phase) of ``kinds``."""
        return [fact.text for fact in request.facts if fact.kind in kinds]

    def compose(self, request: TeacherRequest) -> str:
        """The answer text, within ``min_words``..``max_words`` where the registry allows."""
        seed = hashlib.sha256(f"{self.cfg.seed}:{request.context.record_id}".encode()).digest()
        rng = random.Random(seed)
        g = request.geometry
        head = [
            rng.choice(IDENTIFY).format(name=request.display_name),
            rng.choice(POSITION).format(where=g.position, shape=_shape(g)),
        ]
        significance = self._facts(request, (FactKind.role, FactKind.landmark, FactKind.relation))
        pitfalls = self._facts(request, (FactKind.pitfall,))
        if significance:
            lead = significance.pop(0)
            head.append(rng.choice(SIDE).format(scene=request.scene, fact=_lower_first(lead)))
        tail = [rng.choice(PITFALL).format(fact=_lower_first(rng.choice(pitfalls)))] if pitfalls else []
        rng.shuffle(significance)
        for fact in significance:
            if _words(head + [fact] + tail) <= self.cfg.max_words:
                head.append(fact)
        closing = list(self.anatomy.cfg.closings)
        rng.shuffle(closing)
        while _words(head + tail) < self.cfg.min_words and closing:
            tail.append(closing.pop())
        return " ".join(head + tail)

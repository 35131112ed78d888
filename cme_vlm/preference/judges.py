"""The pair judges: the offline rubric (scores every option) and Gemini (one text-only request per ask).

Both implement ``cme_vlm.preference.selection.PairJudge``. The Gemini judge sends only the
structure, the procedure with its side, phase, the trainee's prompt, the ground-truth answer and the numbered
candidates, through the teacher's guarded client (privacy guard, response journal, audit log).
"""

from __future__ import annotations

import math
from typing import Any

from cme_vlm.anatomy import Anatomy
from cme_vlm.errors import ConfigError
from cme_vlm.preference.selection import PairContext, PairJudge, Verdict
from cme_vlm.schema import ExperimentConfig, JudgeBackend
from cme_vlm.scoring.judge import JudgeCase, RubricJudge, make_judge
from cme_vlm.teacher.gemini import GeminiClient, TeacherFailure
from cme_vlm.teacher.request import OutgoingRequest, RecordContext

PAIR_SYSTEM_INSTRUCTION = (
    "You are a senior colorectal surgeon and an expert in {procedure}. A trainee "
    "model answered a question about one highlighted anatomical structure several times. You receive the "
    "structure, the procedure with its side, the phase, the question, a reference answer written by an expert, "
    "and the numbered candidate answers. Judge each candidate by clinical accuracy (right structure, right side, "
    "correct anatomy and relevance for this procedure) first and relevance and concision second; the order of the "
    "candidates means nothing. Designate the best candidate as 'accepted' and the worst as 'rejected' by "
    "their numbers, and give a one-sentence reason. If no candidate is clearly better than another, "
    "return 0 for both."
)

PAIR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "accepted": {"type": "integer"},
        "rejected": {"type": "integer"},
        "reason": {"type": "string"},
    },
    "required": ["accepted", "rejected", "reason"],
}


class RubricPairJudge:
    """Scores each option with the evaluation stage's rubric; best and worst composite form the pair."""

    name = "rubric"

    def __init__(self, rubric: RubricJudge) -> None:
        self.rubric = rubric

    def choose(self, context: PairContext, options: list[str]) -> Verdict:
        scores = [
            self.rubric.score(
                JudgeCase(context.structure, context.side, context.phase, context.geometry, context.ground_truth, option)
            ).composite
            for option in options
        ]
        best, worst = max(scores), min(scores)
        if best == worst:
            return Verdict(None, None, best, worst, reason=f"all options score {best:.2f}")
        return Verdict(scores.index(best), scores.index(worst), best, worst, reason="rubric composite")


class GeminiPairJudge:
    """Asks Gemini, through the guarded client, for the best and worst of the numbered options."""

    def __init__(self, client: GeminiClient, model: str, anatomy: Anatomy, record: RecordContext | None = None) -> None:
        self.client = client
        self.name = model
        self.anatomy = anatomy
        self.record = record

    def for_record(self, record: RecordContext) -> GeminiPairJudge:
        """The same judge bound to a record, whose identifiers the privacy guard checks against."""
        return GeminiPairJudge(self.client, self.name, self.anatomy, record)

    def request(self, context: PairContext, options: list[str]) -> OutgoingRequest:
        if self.record is None:
            raise ValueError("GeminiPairJudge.request: bind the judge to a record with for_record first")
        numbered = "\n".join(f"[{i}] {text}" for i, text in enumerate(options, start=1))
        return OutgoingRequest(
            purpose="pair_selection",
            system=PAIR_SYSTEM_INSTRUCTION.format(procedure=self.anatomy.cfg.procedure),
            fields={
                "structure": context.structure,
                "side": self.anatomy.scene(context.side),
                "phase": context.phase,
                "prompt": context.prompt,
                "reference": context.ground_truth,
                "candidates": numbered,
            },
            context=self.record,
        )

    def choose(self, context: PairContext, options: list[str]) -> Verdict:
        """The model's pair; no pair when it finally gave no verdict; ``TeacherFailure`` while a re-run could get one."""
        try:
            reply = self.client.generate_json(self.request(context, options), PAIR_SCHEMA)
        except TeacherFailure as e:
            if not e.failure.final:
                raise  # transient: the stage stops here and a re-run asks again
            return Verdict(None, None, reason=f"no verdict from {self.name}: {e.failure.reason} (final)")
        accepted, rejected = int(reply.get("accepted", 0)), int(reply.get("rejected", 0))
        reason = str(reply.get("reason", ""))
        if not (1 <= accepted <= len(options) and 1 <= rejected <= len(options)):
            return Verdict(None, None, reason=reason or f"indices {accepted}/{rejected} out of range")
        return Verdict(accepted - 1, rejected - 1, math.nan, math.nan, reason)


def make_pair_judge(cfg: ExperimentConfig, client: GeminiClient | None = None) -> PairJudge:
    """The configured pair judge; ``client`` is the guarded Gemini client for ``judge=gemini``."""
    if cfg.preference.judge == JudgeBackend.gemini:
        if client is None:
            raise ConfigError(
                "preference.judge=gemini needs the teacher's guarded GeminiClient; build one with "
                "cme_vlm.teacher.gemini, or set preference.judge=rubric for the offline judge."
            )
        return GeminiPairJudge(client, cfg.teacher.gemini.model, Anatomy(cfg.anatomy))
    return RubricPairJudge(make_judge(cfg, JudgeBackend.rubric))

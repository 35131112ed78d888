"""Judges of one answer: the offline rubric judge and the Gemini judge, with the paper's weighted composite.

Both score clinical/factual accuracy and conciseness on 1–5 and combine them as
``composite = (w_c * clinical + w_n * conciseness) / (w_c + w_n)`` with weights from
``eval.judge_weights``. The per-criterion scores and an explanation are kept with every score.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cme_vlm.anatomy import Anatomy
from cme_vlm.data.geometry import MaskGeometry, mask_geometry
from cme_vlm.errors import ConfigError
from cme_vlm.schema import ExperimentConfig, JudgeBackend, JudgeWeights
from cme_vlm.scoring import rubric
from cme_vlm.teacher.gemini import TeacherFailure
from cme_vlm.teacher.request import OutgoingRequest, RecordContext, mask_array

JUDGE_JOURNAL = "judge_journal.jsonl"
JUDGE_AUDIT = "judge_audit.jsonl"
CLINICAL_CRITERIA = ("identification", "exclusivity", "laterality", "position", "facts")


@dataclass(frozen=True)
class JudgeCase:
    """What a judge needs about one answer. ``geometry``: the mask's ``MaskGeometry`` or its description."""

    structure: str  # registry key
    side: str
    phase: str
    geometry: MaskGeometry | str
    reference: str
    candidate: str
    prompt: str = ""  # the question the student was asked
    context: RecordContext | None = field(default=None, repr=False, compare=False)  # for the privacy guard

    @classmethod
    def from_row(cls, row: dict[str, Any], candidate: str) -> JudgeCase:
        """A case from a dataset row (``cme_vlm.data.records``): its answer is the reference."""
        context = RecordContext.from_row(row)
        mask = context.mask if context.mask is not None else mask_array(row["mask"])
        geometry = mask_geometry(mask)
        return cls(row["structure"], row["side"], row["phase"], geometry, row["answer"], candidate, row["prompt"], context)

    @property
    def geometry_text(self) -> str:
        return self.geometry.describe() if isinstance(self.geometry, MaskGeometry) else self.geometry


@dataclass(frozen=True)
class JudgeScore:
    """One verdict: per-criterion 1–5 scores, the two headline scores and their weighted composite."""

    criteria: dict[str, float]
    clinical: float
    conciseness: float
    composite: float
    explanation: str
    judge: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JudgeScore:
        return cls(**data)


def composite(clinical: float, conciseness: float, weights: JudgeWeights) -> float:
    """The weighted mean of the two headline scores (weights need not sum to one)."""
    total = weights.clinical + weights.conciseness
    if weights.clinical < 0 or weights.conciseness < 0 or total <= 0:
        raise ConfigError("eval.judge_weights must be non-negative with a positive sum.")
    return (weights.clinical * clinical + weights.conciseness * conciseness) / total


class Judge(Protocol):
    name: str

    def score(self, case: JudgeCase) -> JudgeScore: ...


class RubricJudge:
    """The offline judge: scores the paper's criteria from the anatomy registry and the mask geometry."""

    name = "rubric"

    def __init__(self, anatomy: Anatomy, weights: JudgeWeights):
        self.anatomy = anatomy
        self.weights = weights

    def score(self, case: JudgeCase) -> JudgeScore:
        target = self.anatomy.resolve(case.structure, "judge case")
        geometry = case.geometry if isinstance(case.geometry, MaskGeometry) else None
        verdicts = {
            "identification": rubric.identification(self.anatomy, case.candidate, target),
            "exclusivity": rubric.exclusivity(self.anatomy, case.candidate, target),
            "laterality": rubric.laterality(case.candidate, case.side),
            "position": rubric.position(case.candidate, geometry.position) if geometry else (3, "no mask geometry"),
            "facts": rubric.facts_covered(self.anatomy, case.candidate, target, case.side, case.phase),
            "conciseness": rubric.conciseness(case.candidate, case.reference),
        }
        criteria = {k: float(v[0]) for k, v in verdicts.items()}
        clinical = sum(criteria[c] for c in CLINICAL_CRITERIA) / len(CLINICAL_CRITERIA)
        if criteria["identification"] == 1:
            clinical = min(clinical, 2.0)  # a fluent answer about the wrong structure is still clinically wrong
        conc = criteria["conciseness"]
        return JudgeScore(
            criteria=criteria,
            clinical=clinical,
            conciseness=conc,
            composite=composite(clinical, conc, self.weights),
            explanation="; ".join(f"{k}: {v[1]}" for k, v in verdicts.items()),
            judge=self.name,
        )


JUDGE_SYSTEM = """You are a senior colorectal surgeon grading a trainee model's answer about one anatomical \
structure highlighted in a laparoscopic frame during {procedure}. You do not see the \
frame. You receive the highlighted structure, the procedure with its side, the phase, where the highlighted \
region lies, an expert's reference answer, and the candidate answer to grade.

Score each criterion from 1 (worst) to 5 (best):
- identification: 5 if the candidate names the highlighted structure as what is shown and claims no other \
structure instead; 1 if it names a different structure or none.
- position: 5 if what it says about where the structure lies agrees with the region description and the \
anatomy; 1 if it contradicts them, including calling a left-sided procedure right-sided or the reverse.
- significance: 5 if it explains correctly why the structure matters for this procedure (plane, landmark, \
pitfall), as the reference does; 1 if the explanation is wrong or missing.
- clinical: overall clinical and factual accuracy, judged on the three criteria above; an answer about \
the wrong structure cannot score above 2.
- conciseness: 5 for a focused answer without repetition or padding; 1 for repeated sentences or loops.

Return JSON only, with integer scores and a one-sentence explanation."""

GEMINI_CRITERIA = ("identification", "position", "significance", "clinical", "conciseness")
JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        **{k: {"type": "integer", "minimum": 1, "maximum": 5} for k in GEMINI_CRITERIA},
        "explanation": {"type": "string"},
    },
    "required": [*GEMINI_CRITERIA, "explanation"],
}


class GeminiJudge:
    """The paper's LLM judge: a written rubric, text only, through the teacher's guarded ``GeminiClient``."""

    name = "gemini"

    def __init__(self, client: Any, anatomy: Anatomy, weights: JudgeWeights):
        self.client = client
        self.anatomy = anatomy
        self.weights = weights

    def request(self, case: JudgeCase) -> OutgoingRequest:
        """The outgoing request: structure, context, reference and candidate as text; no image, no mask."""
        key = self.anatomy.resolve(case.structure, "judge case")
        context = case.context or RecordContext(record_id="", procedure="", frame="")
        return OutgoingRequest(
            purpose="judge",
            system=JUDGE_SYSTEM.format(procedure=self.anatomy.cfg.procedure),
            fields={
                "structure": self.anatomy.display(key),
                "side": self.anatomy.scene(case.side),
                "phase": case.phase,
                **({"prompt": case.prompt} if case.prompt else {}),
                "region": case.geometry_text,
                "reference_answer": case.reference,
                "candidate_answer": case.candidate,
            },
            context=context,
        )

    def score(self, case: JudgeCase) -> JudgeScore:
        """The verdict; NaN scores when the judge finally gave none; ``TeacherFailure`` while a re-run could."""
        judge = f"{self.name}:{getattr(self.client, 'model', '')}".rstrip(":")
        try:
            reply = self.client.generate_json(self.request(case), JUDGE_SCHEMA)
        except TeacherFailure as e:
            if not e.failure.final:
                raise  # transient: the stage stops here and a re-run asks again
            nan = float("nan")  # the metrics count finite scores only, so the case is left out of the judge's figures
            return JudgeScore({}, nan, nan, nan, f"no verdict: {e.failure.reason} (final)", judge)
        criteria = {key: float(reply[key]) for key in GEMINI_CRITERIA}  # 1-5 integers: the client checked the schema
        return JudgeScore(
            criteria=criteria,
            clinical=criteria["clinical"],
            conciseness=criteria["conciseness"],
            composite=composite(criteria["clinical"], criteria["conciseness"], self.weights),
            explanation=str(reply["explanation"]),
            judge=judge,
        )


def make_judge(
    cfg: ExperimentConfig,
    backend: JudgeBackend | str | None = None,
    client: Any = None,
    workdir: str | Path | None = None,
) -> RubricJudge | GeminiJudge:
    """The judge ``backend`` names (default ``cfg.eval.judge``).

    Gemini uses ``client`` if given, else a ``GeminiClient`` (``cfg.teacher.gemini``) whose response
    journal and audit log live in ``workdir``, so a re-run never pays for a verdict twice.
    """
    backend = JudgeBackend(backend or cfg.eval.judge)
    anatomy = Anatomy(cfg.anatomy)
    if backend == JudgeBackend.rubric:
        return RubricJudge(anatomy, cfg.eval.judge_weights)
    if client is None:
        if workdir is None:
            raise ConfigError(
                "the Gemini judge needs a folder for its response journal and audit log (workdir), "
                "or a GeminiClient; or set eval.judge=rubric for the offline judge."
            )
        from cme_vlm.teacher.gemini import GeminiClient

        folder = Path(workdir)
        client = GeminiClient(cfg.teacher.gemini, folder / JUDGE_JOURNAL, folder / JUDGE_AUDIT, seed=cfg.seed)
    return GeminiJudge(client, anatomy, cfg.eval.judge_weights)

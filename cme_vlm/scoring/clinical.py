"""Clinical checks on answers: identification accuracy, laterality errors and collapse.

The paper's failure modes: the base model answered "mesentery" for every structure (collapse),
and fine-tuned models confused left- and right-sided CME (laterality errors).

The per-answer predicates here serve both the evaluation's figures and the verifiable checks of
pair selection (``cme_vlm.preference.checks``), so both count an error the same way.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from cme_vlm.anatomy import Anatomy
from cme_vlm.scoring.rubric import claimed, laterality_error, names


def identified(anatomy: Anatomy, answers: list[str]) -> list[str | None]:
    """What each answer identifies (registry key or distractor), or None when it names nothing."""
    return [anatomy.identified(a) for a in answers]


def identification_hits(anatomy: Anatomy, answers: list[str], targets: list[str]) -> list[bool]:
    """Per answer: does it identify the highlighted structure (its first-named structure is the target)?"""
    return [name == anatomy.resolve(t, "target") for name, t in zip(identified(anatomy, answers), targets, strict=True)]


def names_structure(anatomy: Anatomy, answer: str, target: str) -> bool:
    """Does the answer name the target anywhere, by its key, display name or a synonym?"""
    return names(anatomy, answer, anatomy.resolve(target, "target"))


def other_claims(anatomy: Anatomy, answer: str, target: str) -> list[str]:
    """What else the answer says the highlighted region is: other structures or distractors it claims."""
    return sorted(claimed(anatomy, answer) - {anatomy.resolve(target, "target")})


def laterality_errors(answers: list[str], sides: list[str]) -> list[bool]:
    """Per answer: does it attribute the scene to the other CME side than the record's?"""
    return [laterality_error(answer, side) for answer, side in zip(answers, sides, strict=True)]


@dataclass(frozen=True)
class Collapse:
    """How far a model gives one answer regardless of the target.

    ``share``: fraction of answers naming ``most_common``; ``target_share``: the largest share any
    one structure has among the targets, i.e. the share a perfect model would reach.
    """

    share: float
    most_common: str | None
    target_share: float
    n: int


def collapse(anatomy: Anatomy, answers: list[str], targets: list[str]) -> Collapse:
    """The share of answers that name the most often named structure, and that structure."""
    if not answers:
        return Collapse(float("nan"), None, float("nan"), 0)
    names = Counter(identified(anatomy, answers))
    most_common, count = names.most_common(1)[0]
    target_count = Counter(targets).most_common(1)[0][1]
    return Collapse(count / len(answers), most_common, target_count / len(targets), len(answers))

"""Clinical checks on answers: identification accuracy, laterality errors and collapse.

The paper's failure modes: the base model answered "mesentery" for every structure (collapse),
and fine-tuned models confused left- and right-sided CME (laterality errors).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from cme_vlm.anatomy import Anatomy
from cme_vlm.schema import Side


def identified(anatomy: Anatomy, answers: list[str]) -> list[str | None]:
    """What each answer identifies (registry key or distractor), or None when it names nothing."""
    return [anatomy.identified(a) for a in answers]


def identification_hits(anatomy: Anatomy, answers: list[str], targets: list[str]) -> list[bool]:
    """Per answer: does it identify the highlighted structure (its first-named structure is the target)?"""
    return [name == anatomy.resolve(t, "target") for name, t in zip(identified(anatomy, answers), targets, strict=True)]


def laterality_errors(answers: list[str], sides: list[str]) -> list[bool]:
    """Per answer: does it attribute the scene to the other CME side than the record's?"""
    errors = []
    for answer, side in zip(answers, sides, strict=True):
        named = Anatomy.sides_named(answer)
        errors.append(side != Side.both.value and bool(named) and Side(side) not in named)
    return errors


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

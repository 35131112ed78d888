"""Verifiable checks of one candidate answer: what the anatomy registry and the record allow, with no model.

Four checks, in priority order (the order breaks ties when the checks alone pick a pair):

- ``names_structure``: names the highlighted (masked) structure by its key, display name or a synonym;
- ``claims_no_other``: does not say the highlighted region is another structure or a distractor
  (the collapse to "mesentery" is the failure mode this catches);
- ``side_consistent``: does not attribute the scene to the other CME side than the record's;
- ``length_in_band``: has ``teacher.min_words`` to ``teacher.max_words`` words (whitespace-split, as
  the teacher counts). The band is the teacher's because it is the length the SFT targets were
  written to: pairs that preferred another length would pull DPO away from what SFT learned, and one
  band cannot drift from the other.

The first three are the predicates the evaluation and the rubric judge use (``cme_vlm.scoring.clinical``,
``cme_vlm.scoring.rubric``), so an identification or laterality error counts the same everywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from cme_vlm.anatomy import Anatomy
from cme_vlm.schema import ExperimentConfig
from cme_vlm.scoring.clinical import names_structure, other_claims
from cme_vlm.scoring.rubric import laterality_error


@dataclass(frozen=True)
class CandidateChecks:
    """Which checks one answer passes; the fields are the checks in priority order."""

    names_structure: bool
    claims_no_other: bool
    side_consistent: bool
    length_in_band: bool

    @property
    def passed(self) -> tuple[bool, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))

    @property
    def rank(self) -> tuple[int, tuple[bool, ...]]:
        """Orders answers for checks-only selection: more checks passed first, then the higher-priority ones."""
        return sum(self.passed), self.passed

    def failed_where(self, other: CandidateChecks) -> list[str]:
        """The checks this answer fails and ``other`` passes."""
        return [f.name for f in fields(self) if getattr(other, f.name) and not getattr(self, f.name)]

    def as_dict(self) -> dict[str, bool]:
        return asdict(self)


CHECK_NAMES = tuple(f.name for f in fields(CandidateChecks))


def checks_prefer(first: CandidateChecks, second: CandidateChecks) -> bool | None:
    """True when ``first`` passes every check ``second`` passes and one more; False for the reverse;
    None when the checks express no preference (the same checks passed, or each passes one the other fails)."""
    first_short, second_short = first.failed_where(second), second.failed_where(first)
    if bool(first_short) == bool(second_short):
        return None
    return not first_short


class CandidateChecker:
    """Runs the four checks of one answer against a record's structure and CME side."""

    def __init__(self, anatomy: Anatomy, min_words: int, max_words: int) -> None:
        self.anatomy = anatomy
        self.min_words = min_words
        self.max_words = max_words

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> CandidateChecker:
        return cls(Anatomy(cfg.anatomy), cfg.teacher.min_words, cfg.teacher.max_words)

    def check(self, structure: str, side: str, answer: str) -> CandidateChecks:
        return CandidateChecks(
            names_structure=names_structure(self.anatomy, answer, structure),
            claims_no_other=not other_claims(self.anatomy, answer, structure),
            side_consistent=not laterality_error(answer, side),
            length_in_band=self.min_words <= len(answer.split()) <= self.max_words,
        )

"""The offline judge's criteria: each scores one property of an answer from 1 (wrong) to 5 (right).

Pure functions over text, the anatomy registry and the mask geometry, so each can be tested on
crafted answers. They return ``(score, reason)``; the reasons become the judge's explanation.
"""

from __future__ import annotations

import re

from cme_vlm.anatomy import Anatomy, Mention
from cme_vlm.schema import Side

Verdict = tuple[int, str]

# a copula or "shows" right before a name: the answer says the highlighted thing *is* that
_CLAIM_CUE = re.compile(
    r"\b(?:is|are|shows?|showing|represents?|depicts?|identified as|consistent with|corresponds? to)"
    r"\s+(?:also\s+|\w+ly\s+)?(?:the|a|an|this)?\s*$",
    re.I,
)
_ROW_WORDS = {"upper": "upper", "top": "upper", "lower": "lower", "bottom": "lower"}
_COL_WORDS = {"left": "left", "right": "right", "centre": "centre", "center": "centre", "middle": "centre"}
_FRAME = r"(?:frame|image|view|field|screen|picture)"
_POSITION_PATTERNS = (
    re.compile(r"\b(upper|lower|top|bottom)(?:[\s-]+(left|right|centre|center|middle))?\b", re.I),
    re.compile(rf"\b(left|right)\s+(?:side|part|half|third|portion|edge)\s+of\s+the\s+{_FRAME}\b", re.I),
    re.compile(rf"\b(centre|center|middle)\s+of\s+the\s+{_FRAME}\b", re.I),
)
_STOPWORDS = frozenset(
    "about above after again along among because before below being between beyond could during every from "
    "their there these those through under which while where whose with within without would should other "
    "roughly towards".split()
)
_WORD = re.compile(r"[a-z]+")


def names(anatomy: Anatomy, text: str, target: str) -> bool:
    """Whether the answer names the registry structure ``target`` anywhere (key, display name or synonym)."""
    return any(m.is_structure and m.name == target for m in anatomy.mentions(text))


def identification(anatomy: Anatomy, text: str, target: str) -> Verdict:
    """5: the first structure named is the target; 3: the target is named later; 1: not named."""
    named = anatomy.identified(text)
    if named == target:
        return 5, f"names the {anatomy.display(target)} first"
    if names(anatomy, text, target):
        return 3, f"leads with '{named}' but also names the {anatomy.display(target)}"
    if named is None:
        return 1, "names no structure"
    return 1, f"identifies '{named}' instead of the {anatomy.display(target)}"


def claimed(anatomy: Anatomy, text: str) -> set[str]:
    """What the answer says the highlighted region is: its first name, and names after "is"/"shows"."""
    clean = text.replace("'", "").replace("’", "")
    mentions: list[Mention] = anatomy.mentions(text)
    names = {mentions[0].name} if mentions else set()
    names |= {m.name for m in mentions if _CLAIM_CUE.search(clean[max(0, m.start - 40) : m.start])}
    return names


def exclusivity(anatomy: Anatomy, text: str, target: str) -> Verdict:
    """5: nothing but the target is claimed; 2: the target and something else; 1: only something else."""
    claims = claimed(anatomy, text)
    others = sorted(claims - {target})
    if not claims:
        return 3, "claims no structure"
    if not others:
        return 5, "claims no other structure"
    if target in claims:
        return 2, f"also claims {', '.join(others)}"
    return 1, f"claims {', '.join(others)}"


def laterality_error(text: str, side: str) -> bool:
    """Whether the answer attributes the scene to the other CME side than the record's (and never to its own)."""
    named = Anatomy.sides_named(text)
    return side != Side.both.value and bool(named) and Side(side) not in named


def laterality(text: str, side: str) -> Verdict:
    """1 when the answer places the scene on the other CME side than the record; 3 when on both."""
    named = Anatomy.sides_named(text)
    if laterality_error(text, side):
        return 1, f"calls a {side}-sided scene {'/'.join(sorted(s.value for s in named))}-sided"
    if side == Side.both.value or not named:
        return 5, "no side conflict"
    if named == {Side(side)}:
        return 5, f"{side}-sided, as recorded"
    return 3, "names both sides"


def stated_positions(text: str) -> list[tuple[str | None, str | None]]:
    """The frame positions an answer states, each as (row, column): ("upper", "left"), (None, "centre")."""
    found: list[tuple[str | None, str | None]] = []
    for m in _POSITION_PATTERNS[0].finditer(text):
        found.append((_ROW_WORDS[m.group(1).lower()], _COL_WORDS[m.group(2).lower()] if m.group(2) else None))
    for pattern in _POSITION_PATTERNS[1:]:
        found.extend((None, _COL_WORDS[m.group(1).lower()]) for m in pattern.finditer(text))
    return found


def _parse_geometry(position: str) -> tuple[str | None, str]:
    words = position.split()
    row = words[0] if words[0] in ("upper", "lower") else None
    return row, words[-1] if words[-1] in ("left", "right") else "centre"


def position(text: str, geometry_position: str) -> Verdict:
    """5: a stated position agrees with the mask; 1: one contradicts it; 3: none stated."""
    stated = stated_positions(text)
    if not stated:
        return 3, "states no position"
    row_g, col_g = _parse_geometry(geometry_position)
    conflicts = [
        (r, c) for r, c in stated
        if (r and row_g and r != row_g) or (c in ("left", "right") and col_g in ("left", "right") and c != col_g)
    ]
    if conflicts:
        return 1, f"places it {' '.join(x for x in conflicts[0] if x)}, but the mask lies {geometry_position}"
    if any((r and r == row_g) or (c and c == col_g) for r, c in stated):
        return 5, f"position agrees with the mask ({geometry_position})"
    return 4, f"position roughly compatible with the mask ({geometry_position})"


def _stems(text: str) -> set[str]:
    """Content-word stems (first five letters of words of five letters or more)."""
    return {w[:5] for w in _WORD.findall(text.lower()) if len(w) >= 5 and w not in _STOPWORDS}


def facts_covered(anatomy: Anatomy, text: str, target: str, side: str, phase: str) -> Verdict:
    """How many registry facts true for the record's side and phase the answer conveys: 0 -> 1, 1 -> 3, 2 or more -> 5.

    A fact of the other side is no credit: it is not true for this record.
    """
    answer = _stems(text)
    facts = anatomy.facts_for(target, side, phase)
    covered = 0
    for fact in facts:
        words = _stems(fact.text)
        if words and len(words & answer) / len(words) >= 0.5:
            covered += 1
    score = 1 + round(4 * min(1.0, covered / 2))
    return score, f"covers {covered} of {len(facts)} registry facts true for this record"


def repetition_rate(text: str, n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier one: 0 for none, towards 1 for a loop."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def conciseness(text: str, reference: str) -> Verdict:
    """5 for a non-repetitive answer of sensible length; falls with the repetition rate and with padding."""
    words = len(_WORD.findall(text.lower()))
    if words == 0:
        return 1, "empty answer"
    rate = repetition_rate(text)
    score = 5.0 - 8.0 * rate  # a rate of 0.5 (every other trigram repeated) reaches 1
    limit = 2 * max(len(_WORD.findall(reference.lower())), 40)
    if words > limit:
        score -= 1
    reason = f"repetition {rate:.0%}, {words} words" + (f" (over {limit})" if words > limit else "")
    return int(round(min(5.0, max(1.0, score)))), reason

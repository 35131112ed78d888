"""The anatomy registry: the structures a run knows, their names, sides and facts.

Built from the ``anatomy`` config section (``configs/anatomy/*.yaml``); adding a structure
there is all it takes for every stage to know it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from cme_vlm.errors import DataError
from cme_vlm.schema import AnatomyConfig, Fact, Side, StructureSpec

_SIDE_WORDS = {
    Side.left: re.compile(r"\bleft[- ]sided\b|\bleft (?:cme|colectomy|hemicolectomy|colon)\b", re.I),
    Side.right: re.compile(r"\bright[- ]sided\b|\bright (?:cme|colectomy|hemicolectomy|colon)\b", re.I),
}


def normalise(name: str) -> str:
    """Lower-case, with apostrophes dropped and separators folded to one space."""
    return re.sub(r"[\s_\-/]+", " ", name.lower().replace("'", "").replace("’", "")).strip()


@dataclass(frozen=True)
class Mention:
    """A structure (registry key) or distractor named in a text, and where."""

    name: str
    start: int
    is_structure: bool


class Anatomy:
    """Lookups over an ``AnatomyConfig``: resolve names, find structures named in free text."""

    def __init__(self, cfg: AnatomyConfig):
        self.cfg = cfg

    @property
    def keys(self) -> list[str]:
        return list(self.cfg.structures)

    def __getitem__(self, key: str) -> StructureSpec:
        return self.cfg.structures[self.resolve(key)]

    def display(self, key: str) -> str:
        return self[key].display_name

    @cached_property
    def _aliases(self) -> dict[str, str]:
        aliases: dict[str, str] = {}
        for key, spec in self.cfg.structures.items():
            for name in (key, spec.display_name, *spec.synonyms):
                aliases[normalise(name)] = key
        return aliases

    def lookup(self, name: str) -> str | None:
        """The registry key for a key, display name or synonym, or None."""
        return self._aliases.get(normalise(name))

    def resolve(self, name: str, source: str = "structure") -> str:
        """Like ``lookup`` but raises a ``DataError`` naming ``source`` when unknown."""
        key = self.lookup(name)
        if key is None:
            raise DataError(
                f"{source}: unknown structure '{name}'. Known structures: {', '.join(self.keys)}. "
                "Fix the name, or add the structure (with synonyms) to the anatomy registry YAML."
            )
        return key

    @cached_property
    def _targets(self) -> dict[str, str]:
        """Normalised name -> registry key, or ``!distractor``."""
        return {**self._aliases, **{normalise(d): f"!{d}" for d in self.cfg.distractors}}

    @cached_property
    def _pattern(self) -> re.Pattern[str]:
        names = sorted(self._targets, key=len, reverse=True)
        alternation = "|".join(re.escape(n).replace(r"\ ", r"[\s_\-]+") for n in names)
        return re.compile(rf"\b(?:{alternation})\b", re.I)

    def mentions(self, text: str) -> list[Mention]:
        """Structures and distractors named in ``text``, in order of appearance (longest name wins)."""
        found = []
        clean = text.replace("'", "").replace("’", "")
        for m in self._pattern.finditer(clean):
            target = self._targets[normalise(m.group(0))]
            if target.startswith("!"):
                found.append(Mention(target[1:], m.start(), False))
            else:
                found.append(Mention(target, m.start(), True))
        return found

    def identified(self, text: str) -> str | None:
        """What an answer identifies: the first structure or distractor it names, or None."""
        found = self.mentions(text)
        return found[0].name if found else None

    @staticmethod
    def sides_named(text: str) -> set[Side]:
        """The CME sides a text attributes the scene to ("left-sided", "right colectomy", ...)."""
        return {side for side, pattern in _SIDE_WORDS.items() if pattern.search(text)}

    def proportions(self) -> dict[str, float]:
        """Each structure's share of annotations (the paper's counts, or the registry's)."""
        total = sum(s.annotation_count for s in self.cfg.structures.values())
        return {k: s.annotation_count / total for k, s in self.cfg.structures.items()}

    def sides_for(self, key: str) -> list[Side]:
        """The CME sides on which a structure is seen."""
        side = self[key].side
        return [Side.left, Side.right] if side == Side.both else [side]

    def facts_for(self, key: str, side: str, phase: str) -> list[Fact]:
        """The structure's facts true for a record of ``side`` and ``phase``.

        A fact tagged with one side holds only for records of that side, so a record whose side is
        unknown gets the facts of both sides only; a fact tagged with phases holds only when the
        record's phase is one of them.
        """
        return [f for f in self[key].facts if holds(f, side, phase)]

    def scene(self, side: str) -> str:
        """A record's procedure in words, e.g. "left-sided CME" (``anatomy.scene``); empty for an unknown side."""
        if "{side}" in self.cfg.scene and not side:
            return ""
        return self.cfg.scene.format(side=side)


def holds(fact: Fact, side: str, phase: str) -> bool:
    """Whether ``fact`` is true for a record of ``side`` and ``phase`` (see ``Anatomy.facts_for``)."""
    side_ok = fact.side is Side.both or fact.side.value == side
    return side_ok and (not fact.phases or normalise(phase) in {normalise(p) for p in fact.phases})


def registry_problems(cfg: AnatomyConfig) -> list[str]:
    """Facts whose text names a CME side their ``side`` tag does not allow, or that carry no source."""
    problems = []
    for key, spec in cfg.structures.items():
        for i, fact in enumerate(spec.facts):
            where = f"anatomy.structures.{key}.facts[{i}]"
            named = Anatomy.sides_named(fact.text)
            if fact.side is not Side.both and named - {fact.side}:
                problems.append(f"{where} is tagged side {fact.side.value} but its text names the other side; fix the tag or the text")
            if fact.side is Side.both and len(named) == 1:
                problems.append(f"{where} names only the {next(iter(named)).value} side in its text; tag it side: {next(iter(named)).value}")
            if not fact.source.strip() or fact.source == "???":
                problems.append(f"{where} has no source; give the textbook or peer-reviewed source beside the fact")
    return problems

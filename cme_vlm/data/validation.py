"""Problems found while checking a frames-and-masks source, gathered so that one run reports them all.

The loaders and the data stage run each check through ``Problems.attempt``: a ``DataError``
becomes a ``Problem`` and the check's input is left out, so a dataset of thousands of frames
is checked whole. The list is written as CSV (one row a problem) and summarised on screen.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Callable
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import TypeVar

from rich.console import Group
from rich.table import Table
from rich.text import Text

from cme_vlm import atomic
from cme_vlm.errors import DataError

T = TypeVar("T")

SHOWN_ON_SCREEN = 20  # the rest is in the file; thousands of lines on a terminal help no one


@dataclass(frozen=True)
class Problem:
    """One wrong row or file: what was checked, where, and the message naming the input and the fix."""

    checked: str  # "manifest row", "frame", "mask" or "DSAD file"
    where: str  # the manifest line or the file at fault
    message: str


class Problems:
    """Every problem of one check of a source, in the order found."""

    def __init__(self) -> None:
        self.found: list[Problem] = []

    def __len__(self) -> int:
        return len(self.found)

    def add(self, checked: str, where: str | Path, message: str) -> None:
        self.found.append(Problem(checked, str(where), message))

    def attempt(self, checked: str, where: str | Path, check: Callable[..., T], *args: object) -> T | None:
        """``check(*args)``; None (and a recorded problem) when it raises a ``DataError``."""
        try:
            return check(*args)
        except DataError as e:
            self.add(checked, where, str(e))
            return None

    def counts(self) -> str:
        """How many of each kind, e.g. ``1 frame, 2 mask``."""
        return ", ".join(f"{n} {checked}" for checked, n in Counter(p.checked for p in self.found).items())


def write_problems(problems: Problems, path: Path) -> None:
    """Write the full list as CSV (columns ``checked, where, message``), atomically."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(f.name for f in fields(Problem))
    writer.writerows(astuple(p) for p in problems.found)
    atomic.write_text(path, text.getvalue())


def problem_summary(problems: Problems, path: Path) -> Group:
    """For the screen: counts by kind, the first problems, and the file that holds them all."""
    table = Table("checked", "problem")
    for p in problems.found[:SHOWN_ON_SCREEN]:
        table.add_row(p.checked, Text(p.message))  # Text: a '[' in a path is not rich markup
    more = len(problems) - SHOWN_ON_SCREEN
    return Group(
        Text(f"{len(problems)} problem(s) in the frames and masks: {problems.counts()}", style="bold"),
        table,
        Text(f"full list: {path}" + (f" ({more} more there)" if more > 0 else "")),
    )

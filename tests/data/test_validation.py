from __future__ import annotations

import csv
from pathlib import Path

import pytest
from rich.console import Console

from cme_vlm.data.validation import SHOWN_ON_SCREEN, Problem, Problems, problem_summary, write_problems
from cme_vlm.errors import DataError


def _fails(message: str) -> None:
    raise DataError(message)


def test_attempt_records_data_errors_and_lets_other_errors_through():
    problems = Problems()
    assert problems.attempt("frame", "a.png", len, "abc") == 3
    assert problems.attempt("frame", Path("b.png"), _fails, "frame 'b.png' cannot be read.") is None
    assert problems.found == [Problem("frame", "b.png", "frame 'b.png' cannot be read.")]
    with pytest.raises(ZeroDivisionError):  # a bug is not a problem in the input
        problems.attempt("frame", "c.png", lambda: 1 / 0)
    assert len(problems) == 1


def test_the_list_round_trips_through_csv(tmp_path: Path):
    problems = Problems()
    problems.add("manifest row", "manifest 'm.csv' line 2", 'column \'masks\' is not a JSON object ("oops", at 1). Fix it.')
    problems.add("mask", "msk/a, b.png", "mask 'msk/a, b.png' is empty (all 0).")
    write_problems(problems, tmp_path / "out" / "invalid.csv")
    with open(tmp_path / "out" / "invalid.csv", newline="", encoding="utf-8") as f:
        assert [Problem(**row) for row in csv.DictReader(f)] == problems.found


def test_the_screen_shows_the_first_problems_and_where_the_rest_are(tmp_path: Path):
    problems = Problems()
    for i in range(SHOWN_ON_SCREEN + 5):
        problems.add("mask" if i % 2 else "frame", f"f{i}.png", f"problem number {i}")
    console = Console(width=200, record=True)
    console.print(problem_summary(problems, tmp_path / "invalid.csv"))
    screen = console.export_text()
    assert f"{SHOWN_ON_SCREEN + 5} problem(s) in the frames and masks: 13 frame, 12 mask" in screen
    assert f"problem number {SHOWN_ON_SCREEN - 1}" in screen and f"problem number {SHOWN_ON_SCREEN}" not in screen
    assert "(5 more there)" in screen and "invalid.csv" in screen

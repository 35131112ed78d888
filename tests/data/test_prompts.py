from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

from cme_vlm.anatomy import Anatomy
from cme_vlm.config import load_config
from cme_vlm.data.prompts import choose_prompt, context_line, student_prompt
from cme_vlm.schema import PromptConfig


def test_choice_is_stable_and_spread():
    cfg = PromptConfig()
    ids = [f"{i:016x}" for i in range(400)]
    first = [choose_prompt(cfg, i) for i in ids]
    assert first == [choose_prompt(PromptConfig(), i) for i in ids]
    counts = Counter(first)
    assert set(counts) == set(cfg.templates)
    assert min(counts.values()) > 400 / len(cfg.templates) / 2


def test_choice_does_not_depend_on_the_interpreter_hash_seed():
    code = "from cme_vlm.data.prompts import choose_prompt; from cme_vlm.schema import PromptConfig; " \
        "print([choose_prompt(PromptConfig(), f'id{i}') for i in range(20)])"
    runs = {
        subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, text=True, check=True
        ).stdout
        for seed in ("1", "2")
    }
    assert len(runs) == 1


def test_seed_changes_the_choice():
    ids = [f"r{i}" for i in range(50)]
    a = [choose_prompt(PromptConfig(seed=0), i) for i in ids]
    b = [choose_prompt(PromptConfig(seed=1), i) for i in ids]
    assert a != b


def test_context_line_is_optional():
    with_context = student_prompt(PromptConfig(), "x", "left-sided CME", "mesocolic dissection")
    assert with_context.endswith("\nContext: left-sided CME, phase: mesocolic dissection.")
    without = student_prompt(PromptConfig(include_context=False), "x", "left-sided CME", "mesocolic dissection")
    assert without == choose_prompt(PromptConfig(), "x")
    assert context_line("right-sided CME", "") == "Context: right-sided CME."
    assert context_line("", "") == ""


def test_the_registry_names_the_procedure_of_the_context():
    cme, dsad = (Anatomy(load_config(None, [f"anatomy={name}"]).anatomy) for name in ("cme", "dsad"))
    assert context_line(cme.scene("right"), "") == "Context: right-sided CME."
    assert cme.scene("") == ""  # an unknown side names no side
    assert context_line(dsad.scene("left"), "") == "Context: robot-assisted rectal resection."

"""The student's question: a template chosen per record by a seeded, machine-independent rule."""

from __future__ import annotations

import hashlib

from cme_vlm.schema import PromptConfig


def choose_prompt(prompts: PromptConfig, record_id: str) -> str:
    """The template for ``record_id``: a SHA-256 of (seed, id) picks it, so it is stable everywhere."""
    digest = hashlib.sha256(f"{prompts.seed}\x00{record_id}".encode()).digest()
    return prompts.templates[int.from_bytes(digest[:8], "big") % len(prompts.templates)]


def context_line(scene: str, phase: str) -> str:
    """The record's context in words, e.g. "Context: left-sided CME, phase: mesocolic dissection.".

    ``scene``: the procedure and side as ``Anatomy.scene`` words it ("left-sided CME", "robot-assisted rectal resection").
    """
    parts = [scene] if scene else []
    if phase:
        parts.append(f"phase: {phase}")
    return f"Context: {', '.join(parts)}." if parts else ""


def student_prompt(prompts: PromptConfig, record_id: str, scene: str, phase: str) -> str:
    """The chosen template, followed by the context line when ``prompts.include_context``."""
    question = choose_prompt(prompts, record_id)
    context = context_line(scene, phase) if prompts.include_context else ""
    return f"{question}\n{context}" if context else question

"""Score every model's answers on the test cases and summarise them: overall, per structure, paired tests.

Per answer: BLEU-4, BERTScore F1, the judge's composite (and its clinical and conciseness
parts), whether it identifies the target, whether it makes a laterality error.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from cme_vlm.anatomy import Anatomy
from cme_vlm.evaluation.stats import by_structure, pairwise_tests
from cme_vlm.schema import ExperimentConfig
from cme_vlm.scoring import clinical
from cme_vlm.scoring.judge import JudgeCase, JudgeScore
from cme_vlm.scoring.metrics import bertscore, corpus_bleu, sentence_bleu, summarise

# per-answer metrics: name in metrics.json -> label in the report
METRICS = {
    "bleu4": "BLEU-4",
    "bertscore": "BERTScore F1",
    "judge": "LLM judge",
    "judge_clinical": "Judge: clinical accuracy",
    "judge_conciseness": "Judge: conciseness",
    "identification": "Identification accuracy",
    "laterality_error": "Laterality errors",
}
TESTED_METRICS = ("bleu4", "bertscore", "judge")


def score_answers(
    cfg: ExperimentConfig, judge: Any, rows: list[dict[str, Any]], answers: list[str]
) -> dict[str, list[Any]]:
    """Per-answer scores of one model; ``rows`` are test records (with ``answer`` as the reference)."""
    anatomy = Anatomy(cfg.anatomy)
    refs = [r["answer"] for r in rows]
    verdicts: list[JudgeScore] = [judge.score(JudgeCase.from_row(r, a)) for r, a in zip(rows, answers, strict=True)]
    return {
        "bleu4": sentence_bleu(answers, refs, cfg.eval.bleu_smoothing),
        "bertscore": bertscore(answers, refs, cfg.eval.bertscore).f1,
        "judge": [v.composite for v in verdicts],
        "judge_clinical": [v.clinical for v in verdicts],
        "judge_conciseness": [v.conciseness for v in verdicts],
        "identification": [float(h) for h in clinical.identification_hits(anatomy, answers, [r["structure"] for r in rows])],
        "laterality_error": [float(e) for e in clinical.laterality_errors(answers, [r["side"] for r in rows])],
        "identified": clinical.identified(anatomy, answers),
        "verdicts": [v.to_dict() for v in verdicts],
    }


def summarise_model(
    cfg: ExperimentConfig, rows: list[dict[str, Any]], answers: list[str], scores: dict[str, list[Any]]
) -> dict[str, Any]:
    """Overall and per-structure summaries of one model's per-answer scores."""
    structures = [r["structure"] for r in rows]
    anatomy = Anatomy(cfg.anatomy)
    collapse = clinical.collapse(anatomy, answers, structures)
    return {
        "summary": {m: asdict(summarise(scores[m])) for m in METRICS},
        "corpus_bleu": corpus_bleu(answers, [r["answer"] for r in rows]),
        "laterality_errors": int(sum(scores["laterality_error"])),
        "collapse": asdict(collapse),
        "per_structure": {
            s: {m: asdict(v) for m, v in ((m, by_structure(structures, scores[m])[s]) for m in METRICS)}
            for s in dict.fromkeys(structures)
        },
    }


def paired_tests(scores: dict[str, dict[str, list[Any]]]) -> list[dict[str, Any]]:
    """Wilcoxon signed-rank tests between every pair of models on each tested metric."""
    tests = []
    for metric in TESTED_METRICS:
        for t in pairwise_tests({name: s[metric] for name, s in scores.items()}, metric):
            tests.append({**asdict(t), "verdict": t.verdict()})
    return tests

"""Paired tests between runs: the same model of two runs, answer by answer on the same test records.

Each test is ``cme_vlm.evaluation.stats.wilcoxon`` (two-sided signed-rank, as the run report uses between
models) on the per-answer scores of one model in two runs, aligned by record id; identification is a
0/1 score per answer, so its test counts the records one run identifies and the other does not.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any

from cme_vlm.comparison.runs import RunEvaluation
from cme_vlm.evaluation.report import model_label
from cme_vlm.evaluation.stats import PairedTest, wilcoxon
from cme_vlm.scoring.metrics import summarise

COMPARED_METRICS = ("bleu4", "bertscore", "judge", "identification")


@dataclass(frozen=True)
class RunTest:
    """One paired test of ``model`` between runs ``a`` and ``b`` on ``metric``, over ``structure`` (or all)."""

    model: str
    structure: str
    mean_a: float
    mean_b: float
    test: PairedTest

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "structure": self.structure, "mean_a": self.mean_a, "mean_b": self.mean_b,
                **asdict(self.test), "verdict": self.test.verdict()}


def model_order(names: list[str]) -> list[str]:
    """Base, SFT, DPO, then later preference rounds' DPO (``dpo_r2`` …): ``metrics.json`` keeps its keys sorted."""
    rank = {"base": 0, "sft": 1, "dpo": 2}

    def key(name: str) -> tuple[int, int, str]:
        later_round = int(name.removeprefix("dpo_r")) if name.startswith("dpo_r") else 0
        return rank.get(name, 3), later_round, name

    return sorted(names, key=key)


def shared_models(runs: list[RunEvaluation]) -> list[str]:
    """The models every run evaluated."""
    return model_order([m for m in runs[0].metrics["models"] if all(m in run.metrics["models"] for run in runs)])


def _scores(run: RunEvaluation, model: str, metric: str, ids: list[str]) -> list[float]:
    cases = run.cases()
    return [float(cases[i]["answers"][model][metric]) for i in ids]


def run_tests(runs: list[RunEvaluation], by_structure: bool = False) -> list[RunTest]:
    """Every pair of runs, every shared model and compared metric: overall, or per structure."""
    cases = runs[0].cases()
    ids = sorted(cases)
    groups = {"all": ids}
    if by_structure:
        structures = dict.fromkeys(cases[i]["structure"] for i in ids)
        groups = {s: [i for i in ids if cases[i]["structure"] == s] for s in structures}
    tests = []
    for a, b in itertools.combinations(runs, 2):
        combinations = itertools.product(groups.items(), shared_models(runs), COMPARED_METRICS)
        for (structure, group), model, metric in combinations:
            x, y = _scores(a, model, metric, group), _scores(b, model, metric, group)
            test = wilcoxon(f"{a.label} · {model_label(model)}", x, f"{b.label} · {model_label(model)}", y, metric)
            tests.append(RunTest(model, structure, summarise(x).mean, summarise(y).mean, test))
    return tests

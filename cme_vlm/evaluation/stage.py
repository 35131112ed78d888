"""The evaluation stage: generate on the test split with base/SFT/DPO, score; write metrics, report and W&B run."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from pathlib import Path
from typing import Any

from datasets import Dataset
from rich.console import Console

from cme_vlm import atomic
from cme_vlm.config import save_config
from cme_vlm.data.records import load_dataset
from cme_vlm.errors import ConfigError
from cme_vlm.evaluation.generation import (
    ModelSpec,
    generate_answers,
    model_fingerprint,
    select_test_split,
)
from cme_vlm.evaluation.report import GALLERY_DIRNAME, METRICS_FILENAME, write_report
from cme_vlm.evaluation.scorecard import paired_tests, score_answers, summarise_model
from cme_vlm.evaluation.tracking import log_evaluation
from cme_vlm.review_sheet import png_bytes
from cme_vlm.schema import DataSource, ExperimentConfig
from cme_vlm.scoring.judge import make_judge

console = Console(stderr=True)
KNOWN_MODELS = ("base", "sft", "dpo")


def model_specs(cfg: ExperimentConfig, sft: Path | None, dpo: Path | None,
                later_rounds: dict[str, Path] | None = None) -> list[ModelSpec]:
    """The models ``eval.models`` asks for (``dpo`` brings its later preference rounds, ``dpo_r2`` …).

    An SFT or DPO folder that does not exist is left out.
    """
    unknown = [m for m in cfg.eval.models if m not in KNOWN_MODELS]
    if unknown:
        raise ConfigError(f"eval.models has unknown entries {unknown}; choose from {', '.join(KNOWN_MODELS)}.")
    folders = {"sft": sft, "dpo": dpo}
    names = [m for name in cfg.eval.models for m in ([name, *(later_rounds or {})] if name == "dpo" else [name])]
    folders.update(later_rounds or {})
    specs = []
    for name in names:
        if name == "base":
            specs.append(ModelSpec("base"))
        elif folders[name] and (Path(folders[name]) / "config.json").is_file():
            specs.append(ModelSpec(name, Path(folders[name])))
        else:
            console.print(f"[yellow]{name} model not found at {folders[name]}; left out of the report[/]")
    return specs


def provenance(cfg: ExperimentConfig, ds: Dataset, dataset: Path, specs: list[ModelSpec], judge: str) -> dict[str, Any]:
    """What produced every figure: models, data, metric settings, and whether the numbers mean anything clinically."""
    random_base = not cfg.model.path
    synthetic = cfg.data.source == DataSource.synthetic
    b = cfg.eval.bertscore
    caveats = []
    if random_base:
        caveats.append(f"the base model '{cfg.model.name}' was built from config with random weights (seed {cfg.seed})")
    if synthetic:
        caveats.append("the data are synthetic scenes, not surgical video")
    return {
        "experiment": cfg.name,
        "models": {
            s.name: {"path": str(s.path) if s.path else (cfg.model.path or f"built from config '{cfg.model.name}'"),
                     "fingerprint": model_fingerprint(cfg, s)}
            for s in specs
        },
        "data": {"source": cfg.data.source.value, "synthetic": synthetic, "dataset": str(dataset),
                 "n_records": len(ds), "splits": dict(Counter(ds["split"]))},
        "bleu": f"sacrebleu sentence BLEU-4, smoothing '{cfg.eval.bleu_smoothing}', as a fraction; plus corpus BLEU",
        "bertscore": {"model": b.model, "num_layers": b.num_layers, "rescaled": b.rescale_with_baseline},
        "judge": judge,
        "judge_weights": {"clinical": cfg.eval.judge_weights.clinical, "conciseness": cfg.eval.judge_weights.conciseness},
        "generation": {"decoding": "greedy", "max_new_tokens": cfg.eval.max_new_tokens},
        "caveat": (
            "These numbers show that the pipeline works end to end, not clinical validity: " + "; ".join(caveats) + "."
            if caveats else ""
        ),
    }


def gallery_picks(cases: list[tuple[str, str]], n: int, structures: list[str]) -> list[int]:
    """Indexes of ``n`` of the (structure, side) ``cases``, spread over structures and sides.

    One case of each (structure, side) in registry order, then a second of each, and so on; within
    a group the cases keep their order, so the same test split gives the same gallery.
    """
    rank = {s: i for i, s in enumerate(structures)}
    groups: dict[tuple[str, str], list[int]] = {}
    for i, (structure, side) in enumerate(cases):
        groups.setdefault((structure, side), []).append(i)
    ordered = [groups[g] for g in sorted(groups, key=lambda g: (rank.get(g[0], len(rank)), g))]
    rounds = (group[k] for k in range(max(map(len, ordered), default=0)) for group in ordered if k < len(group))
    return sorted(itertools.islice(rounds, n))


def _save_gallery(test: Dataset, out: Path, n: int, structures: list[str]) -> dict[str, str]:
    """Overlay PNGs of ``n`` test cases (``gallery_picks``) under ``gallery/``; returns id -> relative path."""
    paths = {}
    picks = gallery_picks(list(zip(test["structure"], test["side"], strict=True)), n, structures)
    for row in test.select(picks):
        rel = f"{GALLERY_DIRNAME}/{row['id']}.png"
        atomic.write_bytes(out / rel, png_bytes(row["overlay"].convert("RGB")))
        paths[row["id"]] = rel
    return paths


def evaluate(cfg: ExperimentConfig, dataset: Path, sft: Path | None = None, dpo: Path | None = None,
             out: Path | None = None, **later_rounds: Path) -> Path:
    """Write ``generations/``, ``metrics.json``, ``report.md``, ``report.html``, the config and a W&B run into ``out``.

    ``later_rounds``: the DPO models of preference rounds 2, 3 … as ``dpo_r2=…`` (``preference.rounds``).
    """
    if out is None:
        raise ConfigError("evaluate needs an output folder (--out).")
    out = Path(out)
    ds = load_dataset(dataset, "--dataset")
    test = select_test_split(ds, cfg.eval.max_cases)
    specs = model_specs(cfg, sft, dpo, later_rounds)
    rows = list(test.remove_columns(["overlay"]))  # decoded: masks as images for the judge
    judge = make_judge(cfg, workdir=out)
    scores, models = {}, {}
    for spec in specs:
        console.print(f"evaluating [bold]{spec.name}[/] on {len(test)} test cases")
        answers = generate_answers(cfg, spec, test, out)
        scores[spec.name] = score_answers(cfg, judge, rows, answers) | {"answer": answers}
        models[spec.name] = summarise_model(cfg, rows, answers, scores[spec.name])
    _warn_missing_verdicts(scores)
    gallery = _save_gallery(test, out, cfg.eval.gallery_size, list(cfg.anatomy.structures))
    judge_name = f"{judge.name}:{judge.client.model}" if hasattr(judge, "client") else judge.name
    metrics = {
        "provenance": provenance(cfg, ds, Path(dataset), specs, judge_name),
        "display_names": {key: spec.display_name for key, spec in cfg.anatomy.structures.items()},
        "models": models,
        "tests": paired_tests(scores),
        "cases": [_case(i, row, scores, gallery) for i, row in enumerate(rows)],
    }
    atomic.write_json(out / METRICS_FILENAME, metrics)
    write_report(out, metrics)
    save_config(cfg, out)
    log_evaluation(cfg, out, metrics)
    console.print(f"report written to {out / 'report.html'}")
    return out


def _warn_missing_verdicts(scores: dict[str, dict[str, list[Any]]]) -> None:
    """Say how many answers the judge gave no verdict on for a final reason (their judge score is NaN)."""
    missing = sum(math.isnan(v) for s in scores.values() for v in s["judge"])
    if missing:
        console.print(f"[yellow]{missing} judge verdict(s) are missing for a final reason (blocked, or off-schema after "
                      "every retry; see judge_journal.jsonl): the judge's figures leave those answers out, and a "
                      "re-run will not ask again.[/]")


def _case(i: int, row: dict[str, Any], scores: dict[str, dict[str, list[Any]]], gallery: dict[str, str]) -> dict[str, Any]:
    per_model = {
        name: {k: s[k][i] for k in ("answer", "bleu4", "bertscore", "judge", "identification", "laterality_error",
                                    "identified", "verdicts")}
        for name, s in scores.items()
    }
    return {"id": row["id"], "structure": row["structure"], "side": row["side"], "phase": row["phase"],
            "prompt": row["prompt"], "reference": row["answer"], "gallery": gallery.get(row["id"], ""),
            "answers": per_model}

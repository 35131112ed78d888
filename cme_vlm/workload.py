"""How much work a config's data makes: records per split, paid teacher and judge calls with an estimate of
their tokens, and the optimizer steps of each training stage. The dry-run prints it (``cme_vlm.planning``).

Records come from this run's built dataset when there is one; else, for DSAD, from the tree at ``data.root``
counted by file name, split by surgery as the build splits it (an upper bound: a multilabel mask that turns
out empty makes no record); else from the synthetic frames requested or the registry's annotation counts.

Token estimates follow Gemini's documentation: about four characters a token
(ai.google.dev/gemini-api/docs/tokens), and 258 tokens for an image of at most 384x384 pixels or for each
768x768 tile of a larger one (geminibyexample.com/027-calculate-input-tokens). Each request is the one the
pipeline sends, built from the registry, with stand-in answers of ``teacher.max_words`` words in the
registry's own words. Output is given at its cap (``teacher.gemini.max_output_tokens`` a call); thinking
tokens, where the model spends them, come on top.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from itertools import cycle, islice
from pathlib import Path

import numpy as np
from rich.table import Table

from cme_vlm.anatomy import Anatomy
from cme_vlm.console import folding_table
from cme_vlm.data.dsad import count_dsad
from cme_vlm.data.frames import split_by_procedure
from cme_vlm.data.geometry import mask_geometry
from cme_vlm.data.prompts import student_prompt
from cme_vlm.data.records import load_dataset
from cme_vlm.preference.judges import GeminiPairJudge
from cme_vlm.preference.selection import PairContext
from cme_vlm.schema import DataSource, ExperimentConfig, JudgeBackend, SelectionMode, TeacherBackend, TrainConfig
from cme_vlm.scoring.judge import GeminiJudge, JudgeCase
from cme_vlm.stages import STAGE_BY_NAME
from cme_vlm.teacher.request import OutgoingRequest, RecordContext, build_teacher_request

CHARS_PER_TOKEN = 4
IMAGE_TOKENS = 258  # an image of at most 384x384 pixels, or one 768x768 tile of a larger one


@dataclass(frozen=True)
class RecordCounts:
    """Records per split and per structure, and what the numbers rest on."""

    splits: dict[str, int]
    structures: dict[str, int]
    basis: str

    @property
    def total(self) -> int:
        return sum(self.splits.values())


def _by_fraction(n: int, cfg: ExperimentConfig) -> dict[str, int]:
    test, val = round(n * cfg.data.test_fraction), round(n * cfg.data.val_fraction)
    return {"train": n - test - val, "val": val, "test": test}


def _dsad_counts(cfg: ExperimentConfig, anatomy: Anatomy) -> RecordCounts:
    per_surgery = count_dsad(cfg.data.root, anatomy)
    d = cfg.data
    splits = split_by_procedure(per_surgery, d.val_fraction, d.test_fraction, d.split_seed)
    records: Counter[str] = Counter()
    for surgery, found in per_surgery.items():
        records[splits[surgery]] += found.total()
    structures = sum(per_surgery.values(), Counter())
    return RecordCounts({s: records[s] for s in ("train", "val", "test")}, dict(structures),
                        f"masks in the DSAD tree at data.root, {len(per_surgery)} surgeries split by surgery "
                        "(at most: an empty multilabel mask makes no record)")


def count_records(cfg: ExperimentConfig, run_dir: Path) -> RecordCounts:
    """The records this config's data makes, per split and structure (see the module's docstring)."""
    anatomy = Anatomy(cfg.anatomy)
    built = run_dir / STAGE_BY_NAME["data"].folder
    if (built / "dataset").is_dir():
        ds = load_dataset(built)
        return RecordCounts(dict(Counter(ds["split"])), dict(Counter(ds["structure"])), "records in this run's dataset")
    if cfg.data.source is DataSource.dsad and cfg.data.root and Path(cfg.data.root).is_dir():
        return _dsad_counts(cfg, anatomy)
    shares = {k: round(1000 * p) for k, p in anatomy.proportions().items()}
    if cfg.data.source is DataSource.synthetic:
        return RecordCounts(_by_fraction(cfg.data.synthetic.n_frames, cfg), shares, "synthetic annotations requested")
    counts = sum(s.annotation_count for s in anatomy.cfg.structures.values())
    return RecordCounts(_by_fraction(counts, cfg), shares,
                        "annotations in the registry (the paper's counts); the real number is one per (frame, mask)")


def image_tokens(width: int, height: int) -> int:
    """Gemini's tokens for one image (see the module's docstring)."""
    if width <= 384 and height <= 384:
        return IMAGE_TOKENS
    return math.ceil(width / 768) * math.ceil(height / 768) * IMAGE_TOKENS


def request_tokens(request: OutgoingRequest, image_side: int) -> int:
    """Estimated input tokens of one request: its text at four characters a token, and its mask images."""
    text = len(request.system) + len(request.user_text())
    return math.ceil(text / CHARS_PER_TOKEN) + len(request.masks) * image_tokens(image_side, image_side)


@dataclass(frozen=True)
class _Requests:
    """One request of each paid kind for a representative record of ``structure``."""

    teacher: OutgoingRequest
    pair: OutgoingRequest
    judge: OutgoingRequest


def _requests(cfg: ExperimentConfig, anatomy: Anatomy, structure: str) -> _Requests:
    side, size = anatomy.sides_for(structure)[0].value, cfg.data.image_size
    mask = np.zeros((size, size), bool)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = True
    prompt = student_prompt(cfg.data.prompts, structure, anatomy.scene(side), "")
    row = {"id": structure, "procedure": "", "frame": "", "structure": structure, "side": side, "phase": "",
           "prompt": prompt, "mask": mask}
    words = " ".join(f.text for f in anatomy[structure].facts).split() or [anatomy.display(structure)]
    answer = " ".join(islice(cycle(words), cfg.teacher.max_words))
    shown = [answer] * (cfg.preference.k + cfg.preference.include_ground_truth)
    pair = GeminiPairJudge(None, cfg.teacher.gemini.model, anatomy, RecordContext(structure, "", ""))
    case = JudgeCase(structure, side, "", mask_geometry(mask), answer, answer, prompt)
    return _Requests(
        build_teacher_request(row, anatomy).outgoing(cfg.teacher.min_words, cfg.teacher.max_words),
        pair.request(PairContext(structure, side, "", prompt, answer), shown),
        GeminiJudge(None, anatomy, cfg.eval.judge_weights).request(case),
    )


def _mean_tokens(cfg: ExperimentConfig, counts: RecordCounts) -> dict[str, float]:
    """Input tokens of a teacher, pair and judge request, averaged over the structures by their records."""
    anatomy, total = Anatomy(cfg.anatomy), sum(counts.structures.values()) or 1
    mean: Counter[str] = Counter()
    for structure, n in counts.structures.items():
        requests = _requests(cfg, anatomy, structure)
        for kind in ("teacher", "pair", "judge"):
            mean[kind] += n / total * request_tokens(getattr(requests, kind), cfg.data.image_size)
    return dict(mean)


def _calls(cfg: ExperimentConfig, counts: RecordCounts) -> list[tuple[str, bool, str, int, str]]:
    """(step, paid, backend, calls, token kind) per remote step, before retries."""
    pref, splits = cfg.preference, counts.splits
    dpo_models = pref.rounds if "dpo" in cfg.eval.models else 0
    asked = 0 if pref.selection is SelectionMode.checks else (splits.get("train", 0) + splits.get("val", 0))
    test = splits.get("test", 0) if cfg.eval.max_cases <= 0 else min(cfg.eval.max_cases, splits.get("test", 0))
    return [
        ("teacher answers", cfg.teacher.backend is TeacherBackend.gemini, cfg.teacher.backend.value, counts.total,
         "teacher"),
        ("pair selection", pref.judge is JudgeBackend.gemini, f"{pref.judge.value}, {pref.selection.value}",
         asked * (2 if pref.two_pass else 1) * dpo_models, "pair"),
        ("evaluation judge", cfg.eval.judge is JudgeBackend.gemini, cfg.eval.judge.value,
         test * (len(cfg.eval.models) - ("dpo" in cfg.eval.models) + dpo_models), "judge"),
    ]


def calls_table(cfg: ExperimentConfig, counts: RecordCounts) -> Table:
    """Paid requests per remote step with their estimated input tokens and capped output tokens."""
    cap = cfg.teacher.gemini.max_output_tokens
    calls = _calls(cfg, counts)
    mean = _mean_tokens(cfg, counts) if any(paid for _, paid, *_ in calls) else {}
    table = folding_table(f"teacher and judge calls (from {counts.total} {counts.basis})", "step", "backend", "calls",
                          "input tokens (estimate)", "output tokens (at most)",
                          right=("calls", "input tokens (estimate)", "output tokens (at most)"))
    for step, paid, backend, n, kind in calls:
        if paid:
            table.add_row(step, backend, f"{n:,}", f"{round(n * mean[kind]):,}", f"{n * cap:,}")
        else:
            table.add_row(step, backend, "0 (offline)", "–", "–")
    table.caption = ("tokens: about 4 characters a token of each request as sent, 258 per mask image (Gemini's "
                     "documentation); output at teacher.gemini.max_output_tokens a call, thinking tokens on top")
    return table


def optimizer_steps(train: TrainConfig, examples: int) -> int:
    """A training stage's optimizer steps for ``examples`` per epoch (one device unless ``devices`` is a number)."""
    from cme_vlm.training.trainer import total_optimizer_steps

    devices = train.devices if isinstance(train.devices, int) and train.devices > 0 else 1
    return total_optimizer_steps(train, math.ceil(examples / (train.batch_size * devices * train.num_nodes)))


def steps_table(cfg: ExperimentConfig, counts: RecordCounts) -> Table:
    """Records per split and the optimizer steps each training stage takes on them."""
    train, val, test = (counts.splits.get(s, 0) for s in ("train", "val", "test"))
    table = folding_table(f"records and training steps (from {counts.total} {counts.basis})", "stage", "examples",
                          "batch", "optimizer steps", right=("examples", "batch", "optimizer steps"))
    s, d = cfg.sft, cfg.dpo
    table.add_row("records", f"train {train:,} · val {val:,} · test {test:,}", "", "")
    table.add_row("sft", f"{train:,} records × {s.epochs} epoch(s)", f"{s.batch_size} × {s.grad_accum}",
                  f"{optimizer_steps(s, train):,}")
    if "dpo" in cfg.eval.models:
        rounds = f" per round ({cfg.preference.rounds} rounds)" if cfg.preference.rounds > 1 else ""
        table.add_row("dpo", f"≤ {train:,} pairs × {d.epochs} epoch(s){rounds}", f"{d.batch_size} × {d.grad_accum}",
                      f"≤ {optimizer_steps(d, train):,}")
    table.caption = "a record selection cannot separate makes no pair, so DPO takes at most these steps"
    return table


def workload_tables(cfg: ExperimentConfig, run_dir: Path) -> list[Table]:
    """The dry-run's tables: records and training steps, then paid calls and their tokens."""
    counts = count_records(cfg, run_dir)
    return [steps_table(cfg, counts), calls_table(cfg, counts)]

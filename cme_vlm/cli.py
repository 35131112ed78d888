"""The ``cme-vlm`` command: parse arguments, compose the config, call one stage function.

Every command takes ``--config FILE`` and overrides (``a.b=1`` or ``--a.b=1``). Paths a
command reads or writes default to the run layout (``runs/<name>-<time>/NN-stage``).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from cme_vlm.errors import CmeVlmError
from cme_vlm.stages import stage_function

console = Console(stderr=True)


@dataclass(frozen=True)
class PathArg:
    """A path option of a command and, if it may be left out, the layout folder it defaults to."""

    name: str
    help: str
    default_stage: str | None = None  # RunLayout attribute, e.g. "data"
    sub: str = ""  # sub-path inside that stage folder


@dataclass(frozen=True)
class Command:
    target: str  # "module:function"; called as function(cfg, **paths, **flags)
    help: str
    paths: tuple[PathArg, ...] = ()
    flags: dict[str, dict[str, Any]] = field(default_factory=dict)  # extra argparse options


DATASET = "dataset"
MODEL = "model"

COMMANDS: dict[tuple[str, ...], Command] = {
    ("data", "synth"): Command(
        "cme_vlm.data.stage:synthesize",
        "write a synthetic frames-and-masks tree (a stand-in for private clinical data)",
        (PathArg("out", "output folder", "frames"),),
        {"n": {"type": int, "help": "number of frames (data.synthetic.n_frames)"}},
    ),
    ("data", "build"): Command(
        "cme_vlm.data.stage:build",
        "frames and masks -> instruction dataset (no answers yet)",
        (PathArg("frames", "frames-and-masks tree (manifest or DSAD layout)", "frames"),
         PathArg("out", "output folder", "data")),
    ),
    ("teacher", "answer"): Command(
        "cme_vlm.teacher.stage:answer",
        "fill the instruction dataset with the teacher's expert answers",
        (PathArg("dataset", "instruction dataset", "data", DATASET), PathArg("out", "output folder", "teacher")),
    ),
    ("review", "export"): Command(
        "cme_vlm.teacher.review:export_sheet",
        "write an expert review sheet (CSV + HTML) for a sample of answers",
        (PathArg("dataset", "answered dataset", "teacher", DATASET), PathArg("out", "sheet folder", "teacher", "review")),
        {"fraction": {"type": float, "help": "share of records to sample (review.fraction)"}},
    ),
    ("review", "import"): Command(
        "cme_vlm.teacher.review:import_sheet",
        "apply an expert's approvals, edits and rejections",
        (PathArg("sheet", "the filled review CSV"), PathArg("dataset", "answered dataset", "teacher", DATASET)),
    ),
    ("train", "sft"): Command(
        "cme_vlm.training.sft_stage:train_sft",
        "supervised fine-tuning on the teacher's answers",
        (PathArg("dataset", "answered dataset", "teacher", DATASET), PathArg("out", "output folder", "sft")),
    ),
    ("preference", "build"): Command(
        "cme_vlm.preference.stage:build_preferences",
        "sample candidates with the SFT model, select pairs, precompute reference log-probs",
        (PathArg("dataset", "answered dataset", "teacher", DATASET), PathArg("model", "SFT model", "sft", MODEL),
         PathArg("out", "output folder", "preference")),
    ),
    ("preference", "review-export"): Command(
        "cme_vlm.preference.review:export_sheet",
        "write an expert review sheet for a sample of preference pairs",
        (PathArg("dataset", "preference dataset", "preference", DATASET),
         PathArg("out", "sheet folder", "preference", "review")),
        {"fraction": {"type": float, "help": "share of pairs to sample (review.fraction)"}},
    ),
    ("preference", "review-import"): Command(
        "cme_vlm.preference.review:import_sheet",
        "apply an expert's approve/swap/reject verdicts on pairs",
        (PathArg("sheet", "the filled review CSV"), PathArg("dataset", "preference dataset", "preference", DATASET)),
    ),
    ("train", "dpo"): Command(
        "cme_vlm.training.dpo_stage:train_dpo",
        "direct preference optimisation from the SFT model",
        (PathArg("dataset", "preference dataset", "preference", DATASET), PathArg("model", "SFT model", "sft", MODEL),
         PathArg("out", "output folder", "dpo")),
    ),
    ("evaluate",): Command(
        "cme_vlm.evaluation.stage:evaluate",
        "generate on the test split with base/SFT/DPO and write the report",
        (PathArg("dataset", "answered dataset", "teacher", DATASET), PathArg("sft", "SFT model", "sft", MODEL),
         PathArg("dpo", "DPO model", "dpo", MODEL), PathArg("out", "report folder", "eval")),
    ),
    ("expert", "export"): Command(
        "cme_vlm.evaluation.expert:export_sheet",
        "write a blinded expert evaluation sheet",
        (PathArg("eval_dir", "evaluation folder", "eval"),),
    ),
    ("expert", "import"): Command(
        "cme_vlm.evaluation.expert:import_sheet",
        "fold an expert's scores and preferred-model choices into the report",
        (PathArg("sheet", "the filled expert CSV"), PathArg("eval_dir", "evaluation folder", "eval")),
    ),
    ("run",): Command(
        "cme_vlm.pipeline:run",
        "the whole pipeline, each stage skipped when its output is up to date",
        (PathArg("run_dir", "run folder (default: the latest of this experiment, or a new one)"),),
        {"dry_run": {"action": "store_true", "help": "print the plan, teacher calls and memory; run nothing"},
         "new": {"action": "store_true", "help": "start a new run folder instead of resuming the latest"}},
    ),
    ("explain",): Command(
        "cme_vlm.inference:explain",
        "ask a local model about one frame: overlay the mask, print the explanation",
        (PathArg("model", "model folder (an exported SFT or DPO model)"), PathArg("frame", "frame image"),
         PathArg("mask", "binary mask image")),
        {"structure": {"help": "optional structure name, for the overlay colour"}},
    ),
    ("audit",): Command(
        "cme_vlm.teacher.audit:audit_run",
        "check a run's audit log of outgoing requests against its dataset",
        (PathArg("run_dir", "run folder"),),
    ),
    ("bench",): Command(
        "cme_vlm.bench:run_bench",
        "time SFT, DPO and generation steps; print a table and write JSON",
        (PathArg("out", "output folder for bench.json", None),),
        {"steps": {"type": int, "default": 10, "help": "timed steps (medians)"},
         "only": {"help": "comma-separated subset of sft,dpo,generate"}},
    ),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cme-vlm", description=__doc__.splitlines()[0])
    groups = parser.add_subparsers(dest="cmd", metavar="COMMAND", required=True)
    nested: dict[str, argparse._SubParsersAction] = {}
    for words, command in COMMANDS.items():
        if len(words) == 1:
            sub = groups.add_parser(words[0], help=command.help, description=command.help)
        else:
            if words[0] not in nested:
                nested[words[0]] = groups.add_parser(words[0], help=f"{words[0]} commands").add_subparsers(
                    dest="subcmd", metavar="SUBCOMMAND", required=True
                )
            sub = nested[words[0]].add_parser(words[1], help=command.help, description=command.help)
        sub.set_defaults(command=words)
        positional_config = words == ("run",)
        if positional_config:
            sub.add_argument("experiment", nargs="?", help="experiment YAML (default: experiments/demo.yaml)")
        sub.add_argument("--config", help="experiment YAML (default: experiments/demo.yaml)")
        if all(p.name != "run_dir" for p in command.paths):
            sub.add_argument("--run-dir", dest="run_dir", type=Path,
                             help="run folder whose stage folders are the default paths (default: the latest run)")
        for p in command.paths:
            required = p.default_stage is None and p.name in {"model", "frame", "mask", "sheet"}
            sub.add_argument(f"--{p.name.replace('_', '-')}", dest=p.name, type=Path, required=required, help=p.help)
        for name, spec in command.flags.items():
            sub.add_argument(f"--{name.replace('_', '-')}", dest=name, **spec)
    return parser


def _resolve_paths(command: Command, args: argparse.Namespace, cfg: Any) -> dict[str, Path | None]:
    from cme_vlm.layout import RunLayout

    explicit_run = getattr(args, "run_dir", None)
    layout = RunLayout.for_config(cfg, explicit_run, new=getattr(args, "new", False))
    paths: dict[str, Path | None] = {}
    for p in command.paths:
        value = getattr(args, p.name)
        if value is None and p.name == "run_dir":
            value = layout.root
        if value is None and p.default_stage:
            value = getattr(layout, p.default_stage) / p.sub if p.sub else getattr(layout, p.default_stage)
            if p.name == "out" and os.environ.get("WANDB_SWEEP_ID"):
                # each run of a W&B sweep agent gets its own output folder beside the stage's
                value = value / "sweeps" / os.environ.get("WANDB_RUN_ID", "run")
        paths[p.name] = value
    return paths


def main(argv: list[str] | None = None) -> int:
    from cme_vlm.config import load_config

    args, rest = _parser().parse_known_args(argv)
    command = COMMANDS[args.command]
    positional = getattr(args, "experiment", None)
    if positional and "=" in positional:  # `cme-vlm run a.b=1`: an override, not an experiment file
        rest.insert(0, positional)
        positional = None
    experiment = args.config or positional
    overrides = list(rest)
    if args.command == ("data", "synth") and args.n is not None:
        overrides.append(f"data.synthetic.n_frames={args.n}")
    if getattr(args, "fraction", None) is not None:
        overrides.append(f"review.fraction={args.fraction}")
    try:
        cfg = load_config(experiment, overrides)
        paths = _resolve_paths(command, args, cfg)
        flags = {k: getattr(args, k) for k in command.flags if k not in {"n", "fraction", "new"}}
        stage_function(command.target)(cfg, **paths, **flags)
    except CmeVlmError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; finished work is kept and a re-run resumes[/]")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``cme-vlm`` command: parse arguments, compose the config, call one function.

Each pipeline stage's command comes from the stage registry (``cme_vlm.stages``); the tools
around it (review sheets, expert scores, explain, audit, bench, run) are declared below. Every
command takes ``--config FILE`` and overrides (``a.b=1`` or ``--a.b=1``). Paths a command reads
or writes default to the run layout (``runs/<name>-<time>/NN-stage``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from cme_vlm.config import load_config
from cme_vlm.config_files import USER_CONFIGS_ENV
from cme_vlm.errors import CmeVlmError
from cme_vlm.layout import run_folder
from cme_vlm.stages import STAGES, Input, Stage

console = Console(stderr=True)


@dataclass(frozen=True)
class Flag:
    """An option that is not a path: passed to the function, or (``override``) set as a config key."""

    name: str
    help: str
    type: Callable[[str], Any] | None = None
    default: Any = None
    override: str = ""  # the config key this flag sets, e.g. data.synthetic.n_frames
    switch: bool = False  # a store_true option


@dataclass(frozen=True)
class Command:
    """One ``cme-vlm`` sub-command: the function it calls and its path options.

    A path ``Input`` with a ``stage`` defaults to that stage's folder in the run; one without is
    required. ``takes_run_dir``: the function gets the run folder itself. ``positional`` names what
    may stand bare after the command: the experiment file (``run EXPERIMENT``) or the run folder
    (``audit RUN_DIR``).
    """

    words: tuple[str, ...]
    help: str
    load: Callable[[], Callable[..., Any]]
    paths: tuple[Input, ...] = ()
    flags: tuple[Flag, ...] = ()
    takes_run_dir: bool = False
    positional: str = ""


def stage_command(stage: Stage) -> Command:
    """A stage's command: its inputs and its own folder (``--out``) as path options."""
    out = Input("out", "output folder", stage.name)
    synth = (Flag("n", "number of frames (data.synthetic.n_frames)", int, override="data.synthetic.n_frames"),)
    return Command(stage.command, stage.summary, stage.load, (*stage.inputs, out),
                   synth if stage.name == "frames" else ())


def _teacher_review() -> Any:
    from cme_vlm.teacher import review

    return review


def _pair_review() -> Any:
    from cme_vlm.preference import review

    return review


def _expert() -> Any:
    from cme_vlm.evaluation import expert

    return expert


def _explain() -> Callable[..., Any]:
    from cme_vlm.inference import explain

    return explain


def _audit() -> Callable[..., Any]:
    from cme_vlm.teacher.audit import audit_run

    return audit_run


def _bench() -> Callable[..., Any]:
    from cme_vlm.bench import run_bench

    return run_bench


def _pipeline() -> Callable[..., Any]:
    from cme_vlm.pipeline import run

    return run


FRACTION = Flag("fraction", "share to sample (review.fraction)", float, override="review.fraction")
SHEET = Input("sheet", "the filled review CSV", "")
ANSWERS = Input("dataset", "answered dataset", "teacher", "dataset")
PAIRS = Input("dataset", "preference dataset", "preference", "dataset")
EVAL_DIR = Input("eval_dir", "evaluation folder", "eval")
RUN_DIR = "run_dir"
SERVE = (Flag("host", "address to serve on", str, "127.0.0.1"), Flag("port", "port (0: any free one)", int, 0),
         Flag("allow_remote", "serve beyond this machine (the sheet shows patient frames)", switch=True))

TOOLS: tuple[Command, ...] = (
    Command(("review", "export"), "write an expert review sheet (CSV + HTML) for a sample of answers",
            lambda: _teacher_review().export_sheet, (ANSWERS, Input("out", "sheet folder", "teacher", "review")),
            (FRACTION,)),
    Command(("review", "import"), "apply an expert's approvals, edits and rejections",
            lambda: _teacher_review().import_sheet, (SHEET, ANSWERS)),
    Command(("preference", "review-export"), "write an expert review sheet for a sample of preference pairs",
            lambda: _pair_review().export_sheet, (PAIRS, Input("out", "sheet folder", "preference", "review")),
            (FRACTION,)),
    Command(("preference", "review-import"), "apply an expert's approve/swap/reject verdicts on pairs",
            lambda: _pair_review().import_sheet, (SHEET, PAIRS)),
    Command(("review", "serve"), "fill the answer review sheet in a local web form (saved to its CSV as you go)",
            lambda: _teacher_review().serve_sheet,
            (Input("sheet", "the review CSV", "teacher", "review/review.csv"), ANSWERS), SERVE),
    Command(("preference", "review-serve"), "fill the pair review sheet in a local web form",
            lambda: _pair_review().serve_sheet,
            (Input("sheet", "the review CSV", "preference", "review/review.csv"), PAIRS), SERVE),
    Command(("expert", "serve"), "fill the blinded expert sheet in a local web form", lambda: _expert().serve_sheet,
            (EVAL_DIR,), SERVE),
    Command(("expert", "export"), "write a blinded expert evaluation sheet", lambda: _expert().export_sheet,
            (EVAL_DIR,)),
    Command(("expert", "import"), "fold an expert's scores and preferred-model choices into the report",
            lambda: _expert().import_sheet, (Input("sheet", "the filled expert CSV", ""), EVAL_DIR)),
    Command(("explain",), "ask a local model about one frame: overlay the mask, print the explanation", _explain,
            (Input("model", "model folder (an exported SFT or DPO model)", ""), Input("frame", "frame image", ""),
             Input("mask", "binary mask image", "")),
            (Flag("structure", "optional structure name, for the overlay colour"),)),
    Command(("audit",), "check a run's audit logs of outgoing requests against its dataset", _audit,
            (Input("dataset", "the run's instruction dataset", "data", "dataset"),), takes_run_dir=True,
            positional=RUN_DIR),
    Command(("bench",), "time SFT, DPO and generation steps; print a table and write JSON", _bench, (),
            (Flag("out", "output folder for bench.json", Path), Flag("steps", "timed steps (medians)", int, 10),
             Flag("only", "comma-separated subset of sft,dpo,generate"),
             Flag("memory", "measure one SFT and one DPO step's and explain's peak memory on fake tensors for the dry-run",
                  switch=True))),
    Command(("run",), "the whole pipeline, each stage skipped when its output is up to date", _pipeline, (),
            (Flag("dry_run", "print the plan, teacher calls and memory; run nothing", switch=True),
             Flag("new", "start a new run folder instead of resuming the latest", switch=True)),
            takes_run_dir=True, positional="experiment"),
)
COMMANDS: dict[tuple[str, ...], Command] = {c.words: c for c in (*map(stage_command, STAGES), *TOOLS)}


def _add_command(sub: argparse.ArgumentParser, command: Command) -> None:
    sub.set_defaults(command=command.words)
    if command.positional:
        what = "experiment YAML (default: experiments/demo.yaml)" if command.positional == "experiment" else "run folder"
        sub.add_argument(f"{command.positional}_arg", nargs="?", metavar=command.positional.upper(), help=what)
    sub.add_argument("--config", help="experiment YAML (default: experiments/demo.yaml)")
    sub.add_argument("--configs", help=f"your own configs folder, searched before the shipped ones (or ${USER_CONFIGS_ENV})")
    sub.add_argument("--run-dir", dest=RUN_DIR, type=Path,
                     help="run folder whose stage folders are the default paths (default: the latest run)")
    for p in command.paths:
        sub.add_argument(f"--{p.name.replace('_', '-')}", dest=p.name, type=Path, required=not p.stage,
                         help=p.help + (f" (default: the run's {p.stage} folder)" if p.stage else ""))
    for f in command.flags:
        options = {"action": "store_true"} if f.switch else {"type": f.type, "default": f.default}
        sub.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, help=f.help, **options)


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
        _add_command(sub, command)
    return parser


def _split_positional(command: Command, args: argparse.Namespace, rest: list[str]) -> str | None:
    """The experiment file, taking ``run``'s bare word or ``audit``'s run folder where they stand."""
    bare = getattr(args, f"{command.positional}_arg", None) if command.positional else None
    if bare and "=" in bare:  # `cme-vlm run a.b=1`: an override, not a file
        rest.insert(0, bare)
        bare = None
    if command.positional == RUN_DIR and bare:
        args.run_dir = args.run_dir or Path(bare)
        return args.config
    return args.config or bare


def resolve_paths(command: Command, args: argparse.Namespace, cfg: Any) -> dict[str, Path | None]:
    """Each path option: given on the line, else its stage's folder in the run (a sweep run's own ``out``)."""
    run_dir = run_folder(cfg, args.run_dir, new=getattr(args, "new", False))
    paths: dict[str, Path | None] = {RUN_DIR: run_dir} if command.takes_run_dir else {}
    for p in command.paths:
        value = getattr(args, p.name)
        if value is None:
            value = p.path(run_dir, cfg)
            if p.name == "out" and os.environ.get("WANDB_SWEEP_ID"):
                # each run of a W&B sweep agent gets its own output folder beside the stage's
                value = value / "sweeps" / os.environ.get("WANDB_RUN_ID", "run")
        paths[p.name] = value
    return paths


def parse(argv: list[str] | None) -> tuple[Command, argparse.Namespace, str | None, list[str]]:
    """The command, its parsed options, the experiment file and the config overrides (flags that set keys included)."""
    args, rest = _parser().parse_known_args(argv)
    command = COMMANDS[args.command]
    experiment = _split_positional(command, args, rest)
    overrides = list(rest) + [f"{f.override}={getattr(args, f.name)}" for f in command.flags
                              if f.override and getattr(args, f.name) is not None]
    return command, args, experiment, overrides


def main(argv: list[str] | None = None) -> int:
    command, args, experiment, overrides = parse(argv)
    try:
        cfg = load_config(experiment, overrides, args.configs)
        paths = resolve_paths(command, args, cfg)
        flags = {f.name: getattr(args, f.name) for f in command.flags if not f.override and f.name != "new"}
        command.load()(cfg, **paths, **flags)
    except CmeVlmError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; finished work is kept and a re-run resumes[/]")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

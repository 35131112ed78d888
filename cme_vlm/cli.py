"""The ``cme-vlm`` command: parse arguments, compose the config, call one function.

Each pipeline stage's command comes from the stage registry (``cme_vlm.stages``); the tools
around it (review sheets, expert scores, explain, audit, bench, run) are declared below. Every
command takes ``--config FILE`` and overrides (``a.b=1`` or ``--a.b=1``). Paths a command reads
default to the run layout (``runs/<name>-<time>/NN-stage``). What ``--help`` says is in
``cme_vlm.cli_help``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from cme_vlm.cli_help import OVERVIEW, RUN_EXAMPLES, epilog, example_for
from cme_vlm.config import load_config
from cme_vlm.config_files import USER_CONFIGS_ENV
from cme_vlm.console import quiet_third_party
from cme_vlm.errors import CmeVlmError, Interrupted
from cme_vlm.layout import beside_stage, run_folder
from cme_vlm.stages import STAGES, Input, Stage
from cme_vlm.threads import choose_cpu_threads

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
    choices: tuple[str, ...] | None = None  # the values it accepts


@dataclass(frozen=True)
class Command:
    """One ``cme-vlm`` sub-command: the function it calls and its path options.

    A path ``Input`` with a ``stage`` defaults to that stage's folder in the run; one without is
    required. ``takes_run_dir``: the function gets the run folder itself. ``positional`` names what
    may stand bare after the command: the experiment file (``run EXPERIMENT``), the run folder
    (``audit RUN_DIR``) or the runs to compare (``compare RUN ...``).
    """

    words: tuple[str, ...]
    help: str
    load: Callable[[], Callable[..., Any]]
    paths: tuple[Input, ...] = ()
    flags: tuple[Flag, ...] = ()
    takes_run_dir: bool = False
    positional: str = ""
    stage: str = ""  # the pipeline stage it runs: without --out it writes beside that stage's folder
    chooses_run: bool = False  # the function picks the run itself when --run-dir is not given
    computes: bool = False  # runs models or builds data: the CPU thread count matters and is said


def stage_command(stage: Stage) -> Command:
    """A stage's command: its inputs and its own folder (``--out``) as path options."""
    out = Input("out", "output folder", stage.name)
    synth = (Flag("n", "number of frames (data.synthetic.n_frames)", int, override="data.synthetic.n_frames"),)
    return Command(stage.command, stage.summary, stage.load, (*stage.inputs, out),
                   synth if stage.name == "frames" else (), stage=stage.name, computes=True)


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


def _compare() -> Callable[..., Any]:
    from cme_vlm.comparison import compare_runs

    return compare_runs


def _pipeline() -> Callable[..., Any]:
    from cme_vlm.pipeline import run

    return run


FRACTION = Flag("fraction", "share to sample (review.fraction)", float, override="review.fraction")
SHEET = Input("sheet", "the filled review CSV", "")
ANSWERS = Input("dataset", "answered dataset", "teacher", "dataset")
PAIRS = Input("dataset", "preference dataset", "preference", "dataset")
EVAL_DIR = Input("eval_dir", "evaluation folder", "eval")
RUN_DIR = "run_dir"
RUNS = "runs"  # compare's positional: one or more run folders
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
            (Flag("structure", "optional structure name, for the overlay colour"),
             Flag("side", "the CME's side: left or right (default: the config's data.dsad_side)",
                  choices=("left", "right"))), computes=True),
    Command(("audit",), "check a run's audit logs of outgoing requests against its dataset", _audit,
            (Input("dataset", "the run's instruction dataset", "data", "dataset"),), takes_run_dir=True,
            positional=RUN_DIR),
    Command(("bench",), "time SFT, DPO and generation steps; print a table and write JSON", _bench, (),
            (Flag("out", "output folder for bench.json", Path), Flag("steps", "timed steps (medians)", int, 10),
             Flag("only", "comma-separated subset of sft,dpo,generate"),
             Flag("memory", "measure one SFT and one DPO step's and explain's peak memory on fake tensors for the dry-run",
                  switch=True)), computes=True),
    Command(("compare",), "several runs' Table 1 side by side, paired tests between runs, config differences (local report)",
            _compare, (), (Flag("out", "report folder (default: <output_dir>/compare-<time>)", Path),), positional=RUNS),
    Command(("run",), "run every stage of the experiment in a run folder, skipping what is up to date and resuming "
            "what was interrupted; a config that would redo finished stages of the latest run starts a new run folder "
            "(--run-dir DIR: redo them there)", _pipeline, (),
            (Flag("dry_run", "print the plan, missing inputs and local models, paid calls and memory; run nothing",
                  switch=True),
             Flag("new", "start a new, empty run folder", switch=True)),
            takes_run_dir=True, positional="experiment", chooses_run=True, computes=True),
)
COMMANDS: dict[tuple[str, ...], Command] = {c.words: c for c in (*map(stage_command, STAGES), *TOOLS)}


def _add_command(sub: argparse.ArgumentParser, command: Command) -> None:
    sub.set_defaults(command=command.words)
    if command.positional == RUNS:
        sub.add_argument(RUNS, nargs="+", type=Path, metavar="RUN", help="run folders (or their evaluation folders)")
    elif command.positional:
        what = "experiment YAML (default: experiments/demo.yaml)" if command.positional == "experiment" else "run folder"
        sub.add_argument(f"{command.positional}_arg", nargs="?", metavar=command.positional.upper(), help=what)
    sub.add_argument("--config", help="experiment YAML (default: experiments/demo.yaml)")
    sub.add_argument("--configs", help=f"your own configs folder, searched before the shipped ones (or ${USER_CONFIGS_ENV})")
    sub.add_argument("--run-dir", dest=RUN_DIR, type=Path,
                     help="the run folder to continue, its changed stages redone in place (default: the latest run "
                          "whose finished stages match the config, else a new one)" if command.chooses_run else
                     "run folder whose stage folders are the default paths (default: the latest run)")
    for p in command.paths:
        default = f" (default: the run's {p.stage} folder)" if p.stage else ""
        if command.stage and p.name == "out":
            default = f" (default: a new folder beside the run's {p.stage} folder, named after it and the time)"
        sub.add_argument(f"--{p.name.replace('_', '-')}", dest=p.name, type=Path, required=not p.stage,
                         help=p.help + default)
    for f in command.flags:
        options = {"action": "store_true"} if f.switch else {"type": f.type, "default": f.default, "choices": f.choices}
        sub.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, help=f.help, **options)


def _description(command: Command) -> str:
    text = command.help if not command.stage else (
        f"{command.help}. Reads its inputs from the latest run (or --run-dir, or the paths given) and writes to "
        "--out, by default beside the run's own stage folder, which only `cme-vlm run` writes.")
    return textwrap.fill(text, 100)


def _parser() -> argparse.ArgumentParser:
    formatted = {"formatter_class": argparse.RawDescriptionHelpFormatter}
    parser = argparse.ArgumentParser(prog="cme-vlm", description=OVERVIEW, epilog=epilog(RUN_EXAMPLES), **formatted)
    groups = parser.add_subparsers(dest="cmd", metavar="COMMAND", required=True)
    nested: dict[str, argparse._SubParsersAction] = {}
    for words, command in COMMANDS.items():
        about = {"help": command.help, "description": _description(command),
                 "epilog": epilog(example_for(words, command.stage)), **formatted}
        if len(words) == 1:
            sub = groups.add_parser(words[0], **about)
        else:
            if words[0] not in nested:
                nested[words[0]] = groups.add_parser(words[0], help=f"{words[0]} commands").add_subparsers(
                    dest="subcmd", metavar="SUBCOMMAND", required=True
                )
            sub = nested[words[0]].add_parser(words[1], **about)
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


def _out_beside(stage_folder: Path, command: Command) -> Path:
    """A stage command's own output folder beside the run's stage folder, which only ``cme-vlm run`` writes."""
    if os.environ.get("WANDB_SWEEP_ID"):  # each run of a W&B sweep agent gets its own folder
        return stage_folder.with_name(f"{stage_folder.name}-sweeps") / os.environ.get("WANDB_RUN_ID", "run")
    out = beside_stage(stage_folder)
    console.print(f"{' '.join(command.words)}: writing to {out} ({stage_folder.name} itself is written only by "
                  "`cme-vlm run`; --out DIR writes elsewhere)", soft_wrap=True, markup=False, highlight=False)
    return out


def resolve_paths(command: Command, args: argparse.Namespace, cfg: Any) -> dict[str, Path | None]:
    """Each path option: given on the line, else its stage's folder in the run; a stage command's ``out`` beside it.

    ``run`` chooses its run itself (``cme_vlm.pipeline.choose_run``): it gets ``--run-dir`` as given.
    """
    run_dir = run_folder(cfg, args.run_dir)
    paths: dict[str, Path | None] = {}
    if command.takes_run_dir:
        paths[RUN_DIR] = args.run_dir if command.chooses_run else run_dir
    for p in command.paths:
        value = getattr(args, p.name)
        if value is None:
            value = p.path(run_dir, cfg)
            if p.name == "out" and bool(command.stage):
                value = _out_beside(value, command)
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


def _has(argv: list[str], option: str) -> bool:
    return any(a == option or a.startswith(option + "=") for a in argv)


def interrupted_line(argv: list[str], command: Command, paths: dict[str, Path | None], where: Path | None) -> str:
    """What Ctrl-C left behind and the command that resumes it: the same line, pointed at the same folder."""
    where = where or paths.get("out") or paths.get(RUN_DIR)
    if where is None:
        return "interrupted; nothing half-written is left behind"
    again = [a for a in argv if a != "--new"]
    if command.chooses_run and not _has(argv, "--run-dir"):
        again += ["--run-dir", str(where)]
    if bool(command.stage) and not _has(argv, "--out"):
        again += ["--out", str(where)]
    kept = "the finished stages and the interrupted stage's" if command.chooses_run else "the"
    return (f"interrupted: {kept} checkpoints, journals and outputs so far are kept in {where}. "
            f"Resume with: cme-vlm {shlex.join(again)}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command, args, experiment, overrides = parse(argv)
    quiet_third_party(console.is_terminal)
    if command.computes and not getattr(args, "dry_run", False):
        console.print(choose_cpu_threads(), style="dim", soft_wrap=True, markup=False, highlight=False)
    paths: dict[str, Path | None] = {}
    try:
        cfg = load_config(experiment, overrides, args.configs)
        paths = resolve_paths(command, args, cfg)
        flags = {f.name: getattr(args, f.name) for f in command.flags if not f.override}
        flags |= {RUNS: args.runs} if command.positional == RUNS else {}
        command.load()(cfg, **paths, **flags)
    except CmeVlmError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False)
        return 2
    except KeyboardInterrupt as e:
        line = interrupted_line(argv, command, paths, e.run_dir if isinstance(e, Interrupted) else None)
        console.print(line, style="yellow", soft_wrap=True, markup=False, highlight=False)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The words of ``cme-vlm --help`` and of each command's help: what it does for a user, settings, examples."""

from __future__ import annotations

from cme_vlm.config_files import GROUP_FOLDERS, USER_CONFIGS_ENV

OVERVIEW = """\
Train a small vision-language model, on this machine, to recognise and explain the anatomical
landmarks of robot-assisted Complete Mesocolic Excision: a teacher LLM writes the expert answers
from text and a binary mask only (no frame leaves the machine), the local model learns them (SFT),
then learns which of its own answers the teacher prefers (DPO), and a report compares base, SFT and
DPO. `cme-vlm run` runs every stage; each stage and each tool around it is a command of its own."""

SETTINGS = f"""\
settings (every command takes them after its name):
  a.b=1 or --a.b=1     set one config key: sft.lr=1e-5, data.synthetic.n_frames=60 (a misspelt key
                       is refused with the nearest valid one)
  GROUP=NAME           pick a file of a config group, e.g. model=tiny_qwen3_vl reads
                       configs/model/tiny_qwen3_vl.yaml; the groups:
                       {", ".join(GROUP_FOLDERS)}
  --config EXPERIMENT  the experiment composing them: demo (default), paper, ablations/..., or your YAML
  --configs DIR        your own config folder (group sub-folders), searched first (or ${USER_CONFIGS_ENV})"""

RUN_EXAMPLES = """\
Examples:
  cme-vlm run                                   the demo: synthetic scenes, tiny model, CPU, minutes
  cme-vlm run model=tiny_qwen3_vl               another model family: a new run folder, sharing the
                                                demo's data and teacher answers
  cme-vlm run experiments/paper.yaml --dry-run  the paper's plan: inputs, local models, paid calls, memory
  cme-vlm COMMAND --help                        one command's options"""

STAGE_EXAMPLES = {
    "frames": "cme-vlm data synth --n 60 --out my-frames",
    "data": "cme-vlm data build data=manifest data.root=/data/cme data.manifest=/data/cme/manifest.csv --out my-records",
    "teacher": "cme-vlm teacher answer teacher=gemini --dataset my-records/dataset --out my-answers",
    "sft": "cme-vlm train sft model=tiny_qwen3_vl sft.lr=1e-4 --dataset my-answers/dataset --out my-sft",
    "preference": "cme-vlm preference build preference.k=4 --model my-sft/model --out my-pairs",
    "dpo": "cme-vlm train dpo dpo.beta=0.2 --model my-sft/model --dataset my-pairs/dataset --out my-dpo",
    "eval": "cme-vlm evaluate eval=paper --sft my-sft/model --dpo my-dpo/model --out my-eval",
}

TOOL_EXAMPLES = {
    "review export": "cme-vlm review export --fraction 0.1   (a sheet for 10% of the latest run's teacher answers)",
    "review serve": "cme-vlm review serve   (then open the address it prints; Ctrl-C stops it)",
    "review import": "cme-vlm review import --sheet runs/demo-20260101-120000/02-teacher/review/review.csv",
    "preference review-export": "cme-vlm preference review-export --fraction 0.1",
    "preference review-serve": "cme-vlm preference review-serve",
    "preference review-import": "cme-vlm preference review-import --sheet reviewed-pairs.csv",
    "expert export": "cme-vlm expert export eval.expert_cases=40   (hand 06-eval/expert/ over; keep the key back)",
    "expert serve": "cme-vlm expert serve --eval-dir runs/demo-20260101-120000/06-eval",
    "expert import": "cme-vlm expert import --sheet filled/sheet.csv",
    "explain": "cme-vlm explain --model runs/demo-20260101-120000/05-dpo/model --frame f.png --mask m.png --side right",
    "audit": "cme-vlm audit runs/demo-20260101-120000",
    "compare": "cme-vlm compare runs/demo-20260101-120000 runs/no_overlay-20260101-130000",
    "bench": "cme-vlm bench --memory model=qwen2_5_vl_7b model.path=   (records a step's memory for the dry-run)",
}


def example_for(words: tuple[str, ...], stage: str = "") -> str:
    """The example a command's help ends with."""
    if words == ("run",):
        return RUN_EXAMPLES
    return STAGE_EXAMPLES[stage] if stage else TOOL_EXAMPLES[" ".join(words)]


def epilog(example: str) -> str:
    """The settings every command takes, and ``example``."""
    return f"{SETTINGS}\n\n" + (example if example.startswith("Examples:") else f"Example:\n  {example}")

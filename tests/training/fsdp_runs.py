"""The two-process runs of ``test_fsdp.py``: SFT and DPO under ``strategy: fsdp``, each then resumed from its step 2,
SFT in bf16 with Kahan AdamW and LoRA, DPO against an in-memory reference model (sharded like the policy), and SFT
whose loss turns NaN on rank 1 only (each rank writes what stopped it to ``sft-nan/rank<N>.txt``).

Run as ``python -m tests.training.fsdp_runs ANSWERED PAIRS BASE OUT``; Lightning starts the
second process by running the same command, so every rank runs this file top to bottom.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from cme_vlm.config import load_config
from cme_vlm.errors import TrainingError
from cme_vlm.schema import ExperimentConfig

FSDP = ("strategy=fsdp", "devices=2", "batch_size=2")  # 2 records a device: 4 a step
ONE_DEVICE = ("devices=1", "batch_size=4")  # the same 4 records a step
# bf16 weights with Kahan AdamW (the paper configs' precision and optimizer, without gradient release), activation
# checkpointing, the vision tower frozen and LoRA on the language model (merged on export)
BF16_LORA = ("precision=bf16-true", "optimizer=kahan_adamw", "gradient_checkpointing=true",
             "freezing.vision_encoder=freeze", "freezing.language_model=lora")


def config(stage: str, *overrides: str) -> ExperimentConfig:
    """The tiny model, float32 on CPU, 4 optimizer steps with a checkpoint every 2 (step 2 is mid-epoch), both kept."""
    settings = ("accelerator=cpu", "precision=32-true", "max_steps=4", "checkpoint_every_n_steps=2",
                "keep_checkpoints=2", *overrides)
    return load_config(None, ["model=tiny", "wandb.mode=disabled", "wandb.callbacks=[ablation]",
                              *(f"{stage}.{s}" for s in settings)])


def resume_from_step_2(first: Path, second: Path) -> None:
    """Start ``second`` from ``first``'s step-2 checkpoint (a sharded folder), as a crashed run would resume."""
    if dist.get_rank() == 0:
        shutil.copytree(first / "checkpoints" / "step=2.ckpt", second / "checkpoints" / "last.ckpt")
    dist.barrier()


def stopped_by_nan_on_rank_1(answered: Path, out: Path) -> None:
    """SFT whose second training forward pass on rank 1 returns NaN hidden states; what stopped each rank, kept."""
    from cme_vlm.training import sft_stage

    load_model, forwards = sft_stage.load_model, {"training": 0}

    def poisoned(cfg, path=None):
        loaded = load_model(cfg, path)

        def hook(module, inputs, output):
            if module.training and dist.get_rank() == 1:
                forwards["training"] += 1
                if forwards["training"] == 2:
                    output.last_hidden_state = output.last_hidden_state * torch.nan
            return output

        loaded.model.model.register_forward_hook(hook)
        return loaded

    sft_stage.load_model = poisoned
    try:
        sft_stage.train_sft(config("sft", *FSDP), answered, out)
        stopped = "finished"
    except TrainingError as e:
        stopped = str(e)
    finally:
        sft_stage.load_model = load_model
    (out / f"rank{dist.get_rank()}.txt").write_text(stopped)


def main(answered: Path, pairs: Path, base: Path, out: Path) -> None:
    from cme_vlm.training.dpo_stage import train_dpo
    from cme_vlm.training.sft_stage import train_sft

    train_sft(config("sft", *FSDP), answered, out / "sft")
    resume_from_step_2(out / "sft", out / "sft-resumed")
    train_sft(config("sft", *FSDP), answered, out / "sft-resumed")
    train_sft(config("sft", *FSDP, *BF16_LORA), answered, out / "sft-bf16-lora")
    train_dpo(config("dpo", *FSDP), pairs, base, out / "dpo")
    train_dpo(config("dpo", *FSDP, "reference=in_memory"), pairs, base, out / "dpo-in-memory")
    resume_from_step_2(out / "dpo", out / "dpo-resumed")
    train_dpo(config("dpo", *FSDP), pairs, base, out / "dpo-resumed")
    stopped_by_nan_on_rank_1(answered, out / "sft-nan")


if __name__ == "__main__":
    main(*(Path(arg) for arg in sys.argv[1:5]))

"""``strategy: fsdp`` (FSDP2): two CPU processes over gloo train SFT and DPO as one process does, resume from a
sharded checkpoint, and export a Hugging Face model gathered from the shards."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from cme_vlm.callbacks import SampledValidationCallback
from cme_vlm.data.preference_records import preference_dataset, preference_row
from cme_vlm.data.records import save_dataset
from cme_vlm.errors import ConfigError, TrainingError
from cme_vlm.models.export import export_model
from cme_vlm.preference.reference import precompute_reference
from cme_vlm.schema import Optimizer
from cme_vlm.training.sharding import ShardedDataParallel
from cme_vlm.training.checkpoints import resume_checkpoint
from cme_vlm.training.trainer import strategy

from .fsdp_runs import BF16_LORA, ONE_DEVICE, config
from .test_sft_stage import _records

CHECKOUT = Path(__file__).resolve().parents[2]  # the folder holding the ``tests`` package, which the launch imports

# float32 on both sides, yet the two processes sum the gradients in another order (reduce-scatter) and pad
# their batches of 2 differently from one batch of 4, and Adam magnifies that where gradients are tiny: the
# weight updates agree to within 2% of the largest update (observed: 0.1% for SFT, 0.4% for DPO)
UPDATE_TOLERANCE = 0.02


def test_fsdp_refuses_what_it_cannot_run(tiny_cfg):
    sft = replace(tiny_cfg.sft, strategy="fsdp")
    assert isinstance(strategy(sft, "sft"), ShardedDataParallel)
    assert strategy(replace(sft, strategy="ddp"), "sft") == "ddp"
    with pytest.raises(ConfigError, match=r"sft.gradient_release=false"):
        strategy(replace(sft, optimizer=Optimizer.kahan_adamw, gradient_release=True, grad_clip=0.0), "sft")
    with pytest.raises(ConfigError, match=r"FSDP1.*Use dpo.strategy=fsdp"):
        strategy(replace(tiny_cfg.dpo, strategy="fsdp_cpu_offload"), "dpo")
    with pytest.raises(ConfigError, match=r"wandb.callbacks=\[ablation\]"):
        strategy(sft, "sft", [SampledValidationCallback(None)])


def test_resume_refuses_a_sharded_checkpoint_without_its_metadata_or_without_fsdp(tiny_cfg, tmp_path):
    sft = replace(tiny_cfg.sft, strategy="fsdp")
    folder = tmp_path / "checkpoints" / "last.ckpt"
    folder.mkdir(parents=True)
    (folder / "__0_0.distcp").write_bytes(b"shard")
    (folder / "meta.pt").write_bytes(b"")
    with pytest.raises(TrainingError, match="damaged"):
        resume_checkpoint(tmp_path, sft, "sft")
    (folder / ".metadata").write_bytes(b"")
    assert resume_checkpoint(tmp_path, sft, "sft") == folder
    with pytest.raises(TrainingError, match="Resume it with sft.strategy=fsdp"):
        resume_checkpoint(tmp_path, replace(sft, strategy="ddp"), "sft")


def _pairs(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        record = {"id": f"q{i}", "structure": "duodenum", "side": "right", "phase": "p",
                  "split": "val" if i >= 12 else "train", "prompt": "What is highlighted?",
                  "overlay": Image.new("RGB", (112, 112), (18 * i, 120, 80))}
        rows.append(preference_row(record, f"The duodenum, exposed in right-sided CME {i}.", "Mesentery." * (1 + i % 3),
                                   judge="rubric"))
    return rows


@pytest.fixture(scope="module")
def inputs(tiny_loaded, tmp_path_factory) -> dict[str, Path]:
    """The answered records (12 train), the base model exported, and 12 train + 2 val pairs with reference log-probs."""
    root = tmp_path_factory.mktemp("fsdp-inputs")
    pairs = precompute_reference(tiny_loaded, preference_dataset(_pairs(14)), batch_size=7, max_length=512)
    return {"answered": save_dataset(_records(18), root / "answered"), "pairs": save_dataset(pairs, root / "pairs"),
            "base": export_model(tiny_loaded.model, tiny_loaded.processor, root / "base")}


@pytest.fixture(scope="module")
def two_processes(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp-runs")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    args = [str(inputs[k]) for k in ("answered", "pairs", "base")]
    result = subprocess.run([sys.executable, "-m", "tests.training.fsdp_runs", *args, str(out)],
                            check=False, capture_output=True, text=True, env=env, cwd=CHECKOUT, timeout=900)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "MEMBER: 1/2" in log and "MEMBER: 2/2" in log
    return out


@pytest.fixture(scope="module")
def one_process(inputs, tmp_path_factory) -> Path:
    from cme_vlm.training.dpo_stage import train_dpo
    from cme_vlm.training.sft_stage import train_sft

    out = tmp_path_factory.mktemp("one-process")
    train_sft(config("sft", *ONE_DEVICE), inputs["answered"], out / "sft")
    train_sft(config("sft", *ONE_DEVICE, *BF16_LORA), inputs["answered"], out / "sft-bf16-lora")
    train_dpo(config("dpo", *ONE_DEVICE), inputs["pairs"], inputs["base"], out / "dpo")
    return out


def _weights(model: Path) -> dict[str, torch.Tensor]:
    return load_file(model / "model.safetensors")


def _sharded(checkpoint: Path, file: Path) -> dict:
    """A sharded checkpoint folder read back as one dict (``state_dict``, ``optimizer_0``) through ``file``."""
    dcp_to_torch_save(checkpoint, file)
    return torch.load(file, weights_only=False)


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_fsdp_trains_as_one_process_does(stage, inputs, two_processes, one_process):
    sharded, single = _metrics(two_processes / stage), _metrics(one_process / stage)
    assert sharded["steps"] == single["steps"] == 4
    losses = [loss for _, loss in sharded["train_loss"]]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses == pytest.approx([loss for _, loss in single["train_loss"]], rel=1e-5)
    trained, reference, base = (_weights(two_processes / stage / "model"), _weights(one_process / stage / "model"),
                                _weights(inputs["base"]))
    assert trained.keys() == reference.keys() == base.keys()
    assert any(not torch.equal(trained[k], base[k]) for k in base)
    largest = max(float((reference[k] - base[k]).abs().max()) for k in base)
    assert largest > 0
    for name in trained:
        torch.testing.assert_close(trained[name] - base[name], reference[name] - base[name], rtol=0,
                                   atol=UPDATE_TOLERANCE * largest, msg=name)


@pytest.mark.slow
def test_fsdp_dpo_against_an_in_memory_reference_equals_precomputed_reference(two_processes):
    precomputed, in_memory = _metrics(two_processes / "dpo"), _metrics(two_processes / "dpo-in-memory")
    assert in_memory["reference"] == "in_memory"
    assert [loss for _, loss in in_memory["train_loss"]] == pytest.approx(
        [loss for _, loss in precomputed["train_loss"]], rel=1e-5)
    assert in_memory["after"]["train"]["reward_margin"] == pytest.approx(
        precomputed["after"]["train"]["reward_margin"], rel=1e-4)


@pytest.mark.slow
def test_fsdp_trains_bf16_weights_with_kahan_adamw_and_exports_lora_merged(inputs, two_processes, one_process):
    sharded, single = _metrics(two_processes / "sft-bf16-lora"), _metrics(one_process / "sft-bf16-lora")
    losses = [loss for _, loss in sharded["train_loss"]]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    # bf16 rounding of sums taken in another order: observed 1.0e-3 apart at most (step 3)
    assert losses == pytest.approx([loss for _, loss in single["train_loss"]], rel=5e-3)
    trained, base = _weights(two_processes / "sft-bf16-lora" / "model"), _weights(inputs["base"])
    assert {w.dtype for w in trained.values()} == {torch.bfloat16}
    changed = {k for k in base if not torch.equal(trained[k], base[k].to(torch.bfloat16))}
    assert any(".self_attn." in k for k in changed)  # LoRA merged into the decoder's attention projections
    lora_or_merger = r"model\.layers\.\d+\.self_attn\.[qkvo]_proj\.weight|visual\.merger\..+"
    assert all(re.fullmatch(lora_or_merger, k) for k in changed), changed  # the frozen rest as it was


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_fsdp_resumes_from_a_sharded_checkpoint(stage, two_processes, tmp_path):
    uninterrupted, resumed = two_processes / stage, two_processes / f"{stage}-resumed"
    assert (uninterrupted / "checkpoints" / "step=2.ckpt" / ".metadata").is_file()  # a folder of shards
    assert not [p for p in (uninterrupted / "checkpoints").iterdir() if p.name.startswith(".")]  # no partial save
    steps, losses = zip(*_metrics(resumed)["train_loss"], strict=True)
    # the whole stage's record: steps 1-2 travel in the checkpoint, 3-4 are trained after it, none twice
    assert steps == (1, 2, 3, 4)
    assert losses == pytest.approx([loss for _, loss in _metrics(uninterrupted)["train_loss"]])
    a = _sharded(uninterrupted / "checkpoints" / "step=4.ckpt", tmp_path / "a.pt")
    b = _sharded(resumed / "checkpoints" / "step=4.ckpt", tmp_path / "b.pt")
    torch.testing.assert_close(b["state_dict"], a["state_dict"])
    torch.testing.assert_close(b["optimizer_0"]["state"], a["optimizer_0"]["state"])
    assert [g["lr"] for g in b["optimizer_0"]["param_groups"]] == [g["lr"] for g in a["optimizer_0"]["param_groups"]]
    for name, weight in _weights(uninterrupted / "model").items():
        torch.testing.assert_close(_weights(resumed / "model")[name], weight, msg=name)


@pytest.mark.slow
def test_export_gathered_from_shards_reloads_with_transformers_and_gives_the_trained_logits(
        tiny_cfg, two_processes, tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from cme_vlm.models.encoding import ChatEncoder
    from cme_vlm.models.loading import load_model

    exported = Qwen2_5_VLForConditionalGeneration.from_pretrained(two_processes / "sft" / "model").eval()
    trained = load_model(tiny_cfg)
    state = _sharded(two_processes / "sft" / "checkpoints" / "last.ckpt", tmp_path / "sft.pt")["state_dict"]
    trained.model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    batch = ChatEncoder(trained, 256).encode([Image.new("RGB", (112, 112), (9, 200, 9))], ["Which?"], ["The pancreas."])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    with torch.no_grad():
        torch.testing.assert_close(exported(**inputs).logits, trained.model.eval()(**inputs).logits)


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_stops_every_rank_after_one_last_good_save(two_processes):
    """Rank 1's loss turns NaN: every rank stops at once with the reason, rather than one waiting for the others in
    the next collective (the sharded save of the last good state is one of them)."""
    out = two_processes / "sft-nan"
    stopped = {rank: (out / f"rank{rank}.txt").read_text() for rank in (0, 1)}
    assert stopped[1].startswith("non-finite loss (nan) at optimizer step 1 on records r"), stopped[1]
    assert stopped[0].startswith("another device's loss became non-finite at optimizer step 1"), stopped[0]
    last_good = out / "checkpoints" / "last-good.ckpt"
    assert all(str(last_good) in message for message in stopped.values())
    assert torch.load(last_good / "meta.pt", weights_only=False)["global_step"] == 1  # a whole sharded checkpoint
    assert (last_good / ".metadata").is_file() and not (out / "model").exists()

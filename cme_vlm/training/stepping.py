"""``ManualStepModule``: what SFT and DPO share when they step the optimizer themselves.

Both modules optimise manually (the trainer leaves accumulation and clipping to them). A
subclass gives, per micro-batch, the *sum* of its loss over its units (answer tokens for SFT,
pairs for DPO) and how many units it holds; this module does the rest once:

- the step's objective is the mean over the units of the whole accumulation window, on all
  devices: each micro-batch back-propagates its sum, and when the window closes the gradients
  are scaled by ``1 / units in the window`` — the window's real size, so a short last window of
  an epoch weighs its units like any other; then clip → step → zero → schedule;
- with ``gradient_release`` (one device, optimi's ``kahan_adamw``) the update of every parameter
  happens inside the backward pass and its gradient is freed there, so no window-wide gradient
  ever exists: each micro-batch back-propagates its own mean, the first micro-batches of a window
  only accumulate into the optimizer's moments (optimi's ``optimizer_accumulation``, an
  approximation of gradient accumulation) and the last one updates the weights. Global-norm
  clipping needs every gradient at once, so it is refused there (``grad_clip: 0``) and no
  gradient norm is logged;
- a non-finite loss on any device stops every device at the same micro-batch (``non_finite``);
- ``train/loss`` is the window's mean loss per unit (a torchmetrics metric weighted by units,
  synchronised over devices), logged the same way by SFT and DPO;
- under ``strategy: fsdp`` ``configure_model`` shards the module (``cme_vlm.training.sharding``),
  and the methods named in ``model_calls`` are the ones that gather the weights to run the model.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning import LightningModule
from optimi import prepare_for_gradient_release, remove_gradient_release
from torch import Tensor, nn

from cme_vlm.errors import ConfigError, TrainingError
from cme_vlm.models.adapters import adapter_of
from cme_vlm.models.logprobs import hf_model
from cme_vlm.schema import TrainConfig
from cme_vlm.training.metrics import Float64Mean
from cme_vlm.training.optim import (
    build_optimizer,
    parameter_groups,
    relink_groups,
    warmup_cosine,
)
from cme_vlm.training.sharding import ShardedDataParallel, full_tensor, shard_module


class ManualStepModule(LightningModule):
    """A LightningModule over ``model`` that steps its optimizer at the end of each accumulation window."""

    # the methods that run the model; under ``strategy: fsdp`` the sharded weights are gathered around each
    model_calls: tuple[str, ...] = ("micro_batch_loss", "validation_step")

    def __init__(self, model: nn.Module, train: TrainConfig, total_steps: int, stage: str) -> None:
        super().__init__()
        self.model, self.train_cfg, self.total_steps, self.stage = model, train, total_steps, stage
        self.automatic_optimization = False
        if train.gradient_checkpointing:
            _checkpoint_layers(hf_model(model), train, stage)
        self.train_loss = Float64Mean()  # weighted by units: its weight is the window's unit count on this device
        self.history: dict[str, list] = {"train_loss": []}

    def micro_batch_loss(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """The loss summed over the micro-batch's units (scalar, with graph) and their count (scalar)."""
        raise NotImplementedError

    def non_finite(self, loss_sum: Tensor | None, batch: dict[str, Any]) -> TrainingError:
        """The error that stops training before a non-finite loss reaches the weights.

        Called on every device when any device's loss is non-finite; ``loss_sum`` is this device's
        loss if it is the non-finite one, else ``None``. Every device calls it, so it may save a checkpoint.
        """
        raise NotImplementedError

    def window_logs(self) -> dict[str, Tensor]:
        """Further figures of the closing window to log beside ``train/loss``."""
        return {}

    def configure_model(self) -> None:
        if isinstance(self.trainer.strategy, ShardedDataParallel):
            shard_module(self, self.device_mesh["data_parallel"], self.model_calls)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def configure_optimizers(self) -> dict[str, Any]:
        groups = parameter_groups(self.model, adapter_of(hf_model(self.model).config), self.train_cfg, self.stage)
        if not groups:
            raise TrainingError(f"{self.stage}.freezing leaves no trainable parameter; set a component to train or lora.")
        optimizer = build_optimizer(groups, self.train_cfg, self.stage)
        if self.train_cfg.gradient_release:
            self._check_gradient_release()
            if hasattr(self.model, "_gradient_release_hooks"):  # a second fit of the same module
                remove_gradient_release(self.model)
            prepare_for_gradient_release(self.model, optimizer)
        scheduler = warmup_cosine(optimizer, self.total_steps, self.train_cfg.warmup_ratio, self.train_cfg.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _check_gradient_release(self) -> None:
        s = self.stage
        if self.train_cfg.grad_clip > 0:
            raise ConfigError(f"{s}.gradient_release=true cannot clip by global norm (each gradient is freed before the "
                              f"next exists). Set {s}.grad_clip=0, or {s}.gradient_release=false to clip.")
        if self.trainer.world_size > 1:
            raise ConfigError(f"{s}.gradient_release=true steps each parameter before data-parallel averaging of its "
                              f"gradient; use it on one device, or set {s}.gradient_release=false with {s}.devices>1.")

    def on_train_start(self) -> None:
        if self.train_cfg.gradient_release:  # a resumed run's optimizer state was loaded and moved, copying the links
            relink_groups(self.optimizers().optimizer)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["history"] = self.history  # so a resumed run's metrics.json covers the whole stage

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = checkpoint.get("history", self.history)

    def teardown(self, stage: str) -> None:
        if hasattr(self.model, "_gradient_release_hooks"):
            remove_gradient_release(self.model)

    def closes_window(self, batch_idx: int) -> bool:
        """Whether this batch ends an accumulation window.

        Windows follow the batch's place in the epoch, so a run resumed at a step lines them up the same way.
        """
        return (batch_idx + 1) % self.train_cfg.grad_accum == 0 or batch_idx + 1 == self.trainer.num_training_batches

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss_sum, units = self.micro_batch_loss(batch)
        finite = bool(torch.isfinite(loss_sum))
        # every device decides together: one stopping alone would leave the others waiting in the next collective
        if not self.trainer.strategy.reduce_boolean_decision(finite, all=True):
            raise self.non_finite(None if finite else loss_sum, batch)
        closes = self.closes_window(batch_idx)
        if self.train_cfg.gradient_release:
            self.optimizers().optimizer.optimizer_accumulation = not closes
            self.manual_backward(loss_sum / units.clamp(min=1))
        else:
            self.manual_backward(loss_sum)
        self.train_loss.update(loss_sum.detach() / units.clamp(min=1), weight=units.detach())
        if closes:
            self._close_window()

    def _close_window(self) -> None:
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        logs = {}
        if not self.train_cfg.gradient_release:
            units = self.trainer.strategy.reduce(self.train_loss.weight.clone(), reduce_op="sum")
            scale = self.trainer.world_size / units.clamp(min=1)  # DDP and FSDP already averaged over devices
            for p in self.trainable_parameters():
                if p.grad is not None:
                    p.grad.mul_(scale.to(p.grad.dtype))
            clip = self.train_cfg.grad_clip if self.train_cfg.grad_clip > 0 else math.inf
            logs["train/grad_norm"] = full_tensor(torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), clip))
        # with gradient release the weights are updated already; this step finds no gradient and
        # changes nothing, but counts the optimizer step for Lightning (global_step, max_steps)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        loss = self.train_loss.compute()
        self.train_loss.reset()
        self.history["train_loss"].append([self.global_step, float(loss)])
        lrs = {f"train/lr/{group['name']}": group["lr"] for group in optimizer.param_groups}
        self.log_dict({"train/loss": loss, **lrs, **logs, **self.window_logs()}, prog_bar=True, rank_zero_only=True)


def _checkpoint_layers(model: nn.Module, train: TrainConfig, stage: str) -> None:
    """Recompute every ``checkpoint_every.<component>``-th layer of the vision tower and the decoder (transformers' own)."""
    adapter = adapter_of(model.config)
    for component in ("vision_encoder", "language_model"):
        tower = adapter.tower(model, component)
        every = getattr(train.checkpoint_every, component)
        if every < 0:
            raise ConfigError(f"{stage}.checkpoint_every.{component}={every} must be 0 (keep all activations) or more.")
        if every:
            tower.activation_checkpointing_enable({"use_reentrant": False}, every_n_layers=every)

"""``strategy: fsdp``: fully sharded data parallelism for the SFT and DPO modules (PyTorch's FSDP2).

Why FSDP2 through Lightning's ``ModelParallelStrategy`` and not Lightning's ``FSDPStrategy``
(FSDP1): FSDP1 wraps the whole LightningModule and runs ``training_step`` inside the wrapper's
forward, so a ``manual_backward`` there runs backward in the middle of a forward pass and FSDP1
stops on its state check (Lightning issues #19626 and #19685, open). With ``fully_shard`` the
LightningModule stays itself: ``training_step`` is an ordinary call, and only the methods that
run the model (``ManualStepModule.model_calls``) gather the sharded weights around them.

How the model is cut: each layer the Hugging Face model lists in ``_no_split_modules`` (decoder
layers and vision blocks; the list transformers itself uses for device maps and FSDP wrapping)
is one unit, all-gathered for its own forward and backward and freed after. The rest (embedding,
head, final norm, patch embedding, merger) forms the root unit around the LightningModule, held
whole from the start of a model call until its backward: the chunked head reads
``lm_head.weight`` outside any module's forward, which a unit of its own would not have gathered.

Gradients arrive reduce-scattered and averaged over devices (as DDP's are), so the manual step
scales and clips them as before; ``torch.nn.utils.clip_grad_norm_`` computes the global norm of
sharded (DTensor) gradients over all devices.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning import LightningModule
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor

from cme_vlm import atomic

STRATEGY = "fsdp"
CHECKPOINT_FILES = (".metadata", "meta.pt")  # what a complete sharded checkpoint folder holds besides its shards


class ShardedDataParallel(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` with every device data-parallel (FSDP2, no tensor parallelism).

    Checkpoints are sharded folders (torch.distributed.checkpoint's shards and ``.metadata``, and
    Lightning's ``meta.pt``), written beside their final name and renamed into place once every
    rank has finished, so a crash mid-save leaves the previous checkpoint whole.
    """

    def __init__(self) -> None:
        super().__init__(save_distributed_checkpoint=True)

    def setup_environment(self) -> None:
        self._data_parallel_size, self._tensor_parallel_size = self.num_nodes * self.num_processes, 1
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: str | Path, storage_options: Any = None) -> None:
        path = Path(self.broadcast(str(filepath)))
        with atomic.atomic_dir(path) if self.is_global_zero else contextlib.nullcontext() as folder:
            super().save_checkpoint(checkpoint, self.broadcast(folder), storage_options)
            self.barrier()  # every rank's shard is written before rank 0 renames the folder


def shard_module(module: LightningModule, mesh: DeviceMesh, model_calls: tuple[str, ...]) -> None:
    """Apply FSDP2 to ``module`` in place: one unit per ``_no_split_modules`` layer of every model in it, the rest as root.

    ``model_calls`` name the methods of ``module`` that run a model; FSDP gathers the root's
    weights around each. They must not call one another.
    """
    if isinstance(module, FSDPModule):  # configure_model runs for validate and again for fit
        return
    for layer in _layers(module):
        fully_shard(layer, mesh=mesh)
    fully_shard(module, mesh=mesh)
    for name in model_calls:
        register_fsdp_forward_method(module, name)


def _layers(module: nn.Module) -> list[nn.Module]:
    names: set[str] = set()
    for sub in module.modules():
        names.update(getattr(sub, "_no_split_modules", None) or ())
    return [sub for sub in module.modules() if type(sub).__name__ in names]


def is_sharded(module: nn.Module) -> bool:
    """Whether ``shard_module`` has applied FSDP to ``module``."""
    return isinstance(module, FSDPModule)


def full_tensor(value: Tensor) -> Tensor:
    """A sharded (DTensor) value made whole on every rank; other tensors as they are."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def whole_model(module: LightningModule, skeleton: Callable[[], nn.Module]) -> nn.Module | None:
    """``module.model``; under FSDP, on rank 0, ``skeleton()`` holding its gathered weights (``None`` on other ranks).

    ``skeleton`` builds the same model afresh (as the stage did before training, on the CPU).
    Under FSDP every rank must call this: each weight is gathered from all of them, one at a
    time, into rank 0's CPU memory (torch.distributed.checkpoint's full state dict), so no GPU
    holds more than one whole weight at once.
    """
    if not is_sharded(module):
        return module.model
    state = get_model_state_dict(module.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if torch.distributed.get_rank() != 0:
        return None
    whole = skeleton()
    whole.to(next(iter(state.values())).dtype)  # the precision the weights were trained in (bf16-true casts them)
    whole.load_state_dict(state)
    return whole

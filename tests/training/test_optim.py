"""The paper configs' bf16 update rule keeps small updates; groups per component; the schedule warms up and decays."""

from __future__ import annotations

import importlib
import itertools
from dataclasses import replace

import pytest
import torch
from optimi import prepare_for_gradient_release
from tiny_families import TINY_FAMILIES, tiny_model
from torch import nn

from cme_vlm.config import load_config
from cme_vlm.config_files import REPO_ROOT
from cme_vlm.errors import ConfigError
from cme_vlm.schema import LrScale, TrainConfig
from cme_vlm.training.optim import build_optimizer, warmup_cosine
from cme_vlm.training.sft_module import SFTModule


def _paper_sft(**changes) -> TrainConfig:
    """The optimizer settings of ``experiments/paper.yaml``'s SFT stage at lr 1e-6, no decay."""
    return replace(load_config(REPO_ROOT / "experiments" / "paper.yaml").sft, lr=1e-6, weight_decay=0.0, **changes)


def _moved(dtype: torch.dtype, make, steps: int = 400, release: bool = False, accumulate: int = 1) -> torch.Tensor:
    """How far 256 weights move in ``steps`` updates towards a random target at lr 1e-6."""
    torch.manual_seed(0)
    start, target = torch.randn(256) * 0.02, torch.randn(256)
    layer = nn.Module()
    layer.w = nn.Parameter(start.to(dtype).clone())
    optimizer = make([{"params": [layer.w]}])
    if release:
        prepare_for_gradient_release(layer, optimizer)
    for step in range(steps * accumulate):
        if release:
            optimizer.optimizer_accumulation = (step + 1) % accumulate != 0
        ((layer.w.float() - target) ** 2).sum().backward()
        if not release:
            optimizer.step()
            optimizer.zero_grad()
    return layer.w.detach().float() - start.to(dtype).float()


def _torch_adamw(groups):
    return torch.optim.AdamW(groups, lr=1e-6)


def test_paper_optimizer_in_bf16_follows_fp32_where_plain_bf16_drops_updates():
    paper = _paper_sft()
    fp32 = _moved(torch.float32, _torch_adamw)
    plain = _moved(torch.bfloat16, _torch_adamw)
    ours = _moved(torch.bfloat16, lambda g: build_optimizer(g, paper, "sft"), release=paper.gradient_release)
    assert fp32.abs().mean() > 3e-4  # 400 steps of ~1e-6 each
    assert (ours - fp32).norm() / fp32.norm() < 0.15
    assert (plain - fp32).norm() / fp32.norm() > 0.9  # plain bf16 AdamW loses nearly everything


def test_gradient_release_steps_in_the_backward_pass_like_a_separate_step():
    train = _paper_sft(gradient_release=False)
    separate = _moved(torch.bfloat16, lambda g: build_optimizer(g, train, "sft"), steps=50)
    released = _moved(torch.bfloat16, lambda g: build_optimizer(g, replace(train, gradient_release=True), "sft"),
                      steps=50, release=True)
    torch.testing.assert_close(released, separate)


def test_kahan_adamw_in_fp32_is_torch_adamw():
    ours = _moved(torch.float32, lambda g: build_optimizer(g, _paper_sft(gradient_release=False), "sft"), steps=50)
    torch.testing.assert_close(ours, _moved(torch.float32, _torch_adamw, steps=50), rtol=1e-2, atol=2e-7)


def test_gradient_release_needs_optimi():
    with pytest.raises(ConfigError, match="kahan_adamw"):
        build_optimizer([{"params": [nn.Parameter(torch.zeros(2))]}], TrainConfig(gradient_release=True), "sft")


def test_released_optimizer_saves_and_loads_its_state_without_group_copies():
    train = _paper_sft(gradient_release=True)
    layer = nn.Linear(4, 4).to(torch.bfloat16)
    optimizer = build_optimizer([{"params": list(layer.parameters())}], train, "sft")
    prepare_for_gradient_release(layer, optimizer)
    layer(torch.ones(2, 4, dtype=torch.bfloat16)).sum().backward()
    saved = optimizer.state_dict()
    assert all("group" not in s and "exp_avg" in s for s in saved["state"].values())
    fresh = build_optimizer([{"params": list(layer.parameters())}], train, "sft")
    fresh.load_state_dict(saved)
    for p in layer.parameters():
        assert fresh.state[p]["group"] is fresh.param_groups[0]  # the hooks read the group the scheduler updates
        torch.testing.assert_close(fresh.state[p]["exp_avg"], optimizer.state[p]["exp_avg"])


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_each_component_is_a_group_at_its_scaled_lr(name):
    loaded = tiny_model(name)
    sft = replace(load_config().sft, lr=0.001, lr_scale=LrScale(vision_encoder=0.1, merger=2.0))
    module = SFTModule(loaded.model, loaded.adapter, sft, total_steps=10)
    optimizer = module.configure_optimizers()["optimizer"]
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == pytest.approx({"vision_encoder": 1e-4, "merger": 2e-3, "language_model": 1e-3})
    counts = {g["name"]: sum(p.numel() for p in g["params"]) for g in optimizer.param_groups}
    expected = {c: 0 for c in lrs}
    for param_name, p in loaded.model.named_parameters():
        expected[loaded.adapter.component_of(param_name)] += p.numel()
    assert counts == expected


def test_frozen_component_has_no_group(tiny_loaded):
    from cme_vlm.models.freezing import apply_freezing

    cfg = load_config(None, ["model=tiny", "sft.freezing.vision_encoder=freeze"])
    model = apply_freezing(tiny_loaded.model, tiny_loaded.adapter, cfg.sft.freezing)
    try:
        optimizer = SFTModule(model, tiny_loaded.adapter, cfg.sft, total_steps=10).configure_optimizers()["optimizer"]
        assert [g["name"] for g in optimizer.param_groups] == ["merger", "language_model"]
    finally:
        tiny_loaded.model.requires_grad_(True)


def test_warmup_then_cosine_to_floor_in_every_group():
    opt = torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr": 1.0},
                           {"params": [nn.Parameter(torch.zeros(1))], "lr": 0.1}])
    sched = warmup_cosine(opt, total_steps=100, warmup_ratio=0.1, min_lr_ratio=0.1)
    lrs = []
    for _ in range(100):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx([0.1, 0.01]) and lrs[9] == pytest.approx([1.0, 0.1])
    assert all(a[0] >= b[0] for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[-1] == pytest.approx([0.1, 0.01], abs=0.01)


KERNELS = ("_single_param_triton_adam", "_triton_adam", "_single_param_adam", "_single_adam", "_foreach_adam")


@pytest.fixture
def on_a_cuda_card(monkeypatch) -> list[str]:
    """optimi told that every tensor sits on a bf16-capable CUDA card with Triton importable; the kernels a step runs
    are recorded in the returned list, outermost first (the Triton ones are not run)."""
    optimi_adam = importlib.import_module("optimi.adam")  # the module: ``optimi.adam`` is its function of that name
    from optimi import optimizer as optimi_optimizer
    from optimi import utils as optimi_utils

    monkeypatch.setattr(optimi_utils, "_triton_kernels_supported_device", lambda tensor: True)
    monkeypatch.setattr(optimi_utils, "HAS_TRITON", True)
    monkeypatch.setattr(optimi_optimizer, "HAS_TRITON", True)
    picked: list[str] = []
    for name in KERNELS:
        def record(*args, _name=name, _real=getattr(optimi_adam, name, None), **kwargs):
            picked.append(_name)
            if "triton" not in _name:
                _real(*args, **kwargs)

        monkeypatch.setattr(optimi_adam, name, record, raising=False)
    return picked


def test_gradient_release_steps_plain_cuda_parameters_with_optimis_triton_kernel(on_a_cuda_card):
    """Trap: gradient release sets every group's ``foreach`` to False and optimi picks Triton only when ``foreach`` is
    None (and its own check accepts ``torch.Tensor`` but not ``nn.Parameter``), so left to itself it steps each
    parameter with its PyTorch loop."""
    from optimi.utils import _default_to_triton

    layer = nn.Linear(4, 4).to(torch.bfloat16)
    assert not _default_to_triton(list(layer.parameters()))  # optimi's own choice, even off gradient release
    optimizer = build_optimizer([{"params": list(layer.parameters())}], _paper_sft(gradient_release=True), "sft")
    prepare_for_gradient_release(layer, optimizer)
    layer(torch.ones(2, 4, dtype=torch.bfloat16)).sum().backward()
    assert on_a_cuda_card == ["_single_param_triton_adam"] * 2  # weight and bias, each in the backward pass


def test_sharded_parameters_never_reach_optimis_triton_kernel(on_a_cuda_card, tmp_path):
    """Trap: importing ``torch.distributed.tensor`` adds ``DTensor`` to the types optimi's Triton check accepts, so
    under FSDP optimi would launch its kernel on a shard's pointer with the global element count."""
    import torch.distributed as dist
    from optimi.utils import _default_to_triton
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        weight = nn.Parameter(distribute_tensor(torch.randn(4, 4, dtype=torch.bfloat16), mesh, [Shard(0)]))
        assert _default_to_triton([weight])  # what optimi would pick for it
        optimizer = build_optimizer([{"params": [weight]}], _paper_sft(gradient_release=False), "sft")
        weight.grad = distribute_tensor(torch.ones(4, 4, dtype=torch.bfloat16), mesh, [Shard(0)])
        optimizer.step()
    finally:
        dist.destroy_process_group()
    assert on_a_cuda_card[0] == "_single_adam" and not any("triton" in k for k in on_a_cuda_card)  # the PyTorch loop

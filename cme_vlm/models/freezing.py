"""Per-component freezing: each of vision encoder, merger and language model is trained,
frozen, or adapted with LoRA (one peft adapter per component, with its own rank, alpha,
dropout and target modules)."""

from __future__ import annotations

from torch import nn

from cme_vlm.models.adapters import COMPONENTS, ModelAdapter
from cme_vlm.schema import ComponentMode, FreezingConfig


def apply_freezing(model: nn.Module, adapter: ModelAdapter, freezing: FreezingConfig) -> nn.Module:
    """Return the model to train: LoRA-wrapped if a component asks for it, with requires_grad set.

    ``train`` components have every parameter trainable, ``freeze`` none, ``lora`` only their
    LoRA matrices.
    """
    modes = {c: ComponentMode(getattr(freezing, c)) for c in COMPONENTS}
    lora = [c for c in COMPONENTS if modes[c] == ComponentMode.lora]
    if lora:
        model = _wrap_lora(model, adapter, freezing, lora)
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.requires_grad_(True)
        else:
            param.requires_grad_(modes[adapter.component_of(name)] == ComponentMode.train)
    return model


def _wrap_lora(model: nn.Module, adapter: ModelAdapter, freezing: FreezingConfig, components: list[str]) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    peft_model = None
    for component in components:
        spec = freezing.lora[component]
        config = LoraConfig(
            r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
            target_modules=adapter.module_pattern(component, list(spec.target_modules)),
        )
        if peft_model is None:
            peft_model = get_peft_model(model, config, adapter_name=component)
        else:
            peft_model.add_adapter(component, config)
    peft_model.base_model.set_adapter(components)
    return peft_model


def parameter_counts(model: nn.Module, adapter: ModelAdapter) -> dict[str, dict[str, int]]:
    """Per component: trainable and frozen parameter counts (LoRA matrices count as their component's)."""
    counts = {c: {"trainable": 0, "frozen": 0} for c in COMPONENTS}
    for name, param in model.named_parameters():
        key = "trainable" if param.requires_grad else "frozen"
        counts[adapter.component_of(_base_name(name))][key] += param.numel()
    return counts


def _base_name(name: str) -> str:
    """The base parameter a LoRA matrix belongs to, e.g. ``...q_proj.lora_A.merger.weight`` -> ``...q_proj.weight``."""
    for marker in (".lora_A.", ".lora_B.", ".base_layer."):
        if marker in name:
            return name.split(marker)[0] + ".weight"
    return name


def parameter_table(model: nn.Module, adapter: ModelAdapter, freezing: FreezingConfig):
    """A rich table of trainable/frozen parameters per component, with the component's mode."""
    from rich.table import Table

    table = Table(title="parameters per component")
    for column in ("component", "mode", "trainable", "frozen"):
        table.add_column(column, justify="left" if column in ("component", "mode") else "right")
    counts = parameter_counts(model, adapter)
    for c in COMPONENTS:
        table.add_row(c, ComponentMode(getattr(freezing, c)).value, f"{counts[c]['trainable']:,}", f"{counts[c]['frozen']:,}")
    total = {k: sum(v[k] for v in counts.values()) for k in ("trainable", "frozen")}
    table.add_row("total", "", f"{total['trainable']:,}", f"{total['frozen']:,}", style="bold")
    return table

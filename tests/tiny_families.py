"""The random tiny model of every declared family, built once per test session."""

from __future__ import annotations

import copy
import functools
from dataclasses import replace

import yaml

from cme_vlm.config_files import REPO_ROOT
from cme_vlm.families import Capability, family
from cme_vlm.models.loading import LoadedModel

# one per family: the Qwen-VL ones beside Gemma 3 (MedGemma), InternVL, LLaVA-OneVision, SmolVLM and Qwen3.5
TINY_FAMILIES = ("tiny", "tiny_qwen2_vl", "tiny_qwen3_vl", "tiny_qwen3_5", "tiny_gemma3", "tiny_internvl",
                 "tiny_llava_onevision", "tiny_smolvlm", "tiny_llava")


@functools.cache
def tiny_model(name: str) -> LoadedModel:
    """The ``model=<name>`` tiny model of the demo config. Tests must not change its weights: use ``float64_copy``."""
    from cme_vlm.config import load_config
    from cme_vlm.models.loading import load_model

    return load_model(load_config(None, [f"model={name}"]))


def refused(name: str, capability: Capability) -> bool:
    """Whether the family of ``model=<name>`` refuses ``capability`` (``cme_vlm.families``)."""
    node = yaml.safe_load((REPO_ROOT / "configs" / "model" / f"{name}.yaml").read_text())
    return capability in family(node["family"]).refuses


def float64_copy(loaded: LoadedModel, attn: str = "sdpa", train: bool = True) -> LoadedModel:
    """A float64 copy (train mode unless asked), so that two computations differ only by summation order."""
    model = copy.deepcopy(loaded.model).double().train(train)
    model.set_attn_implementation(attn)
    return replace(loaded, model=model)

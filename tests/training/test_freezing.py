"""Per freezing mode and family, exactly the intended parameters change after one optimizer step."""

from __future__ import annotations

import copy
import functools
import re

import pytest
import torch
from PIL import Image
from tiny_families import TINY_FAMILIES, refused, tiny_model

from cme_vlm.families import Capability
from cme_vlm.models.adapters import COMPONENTS
from cme_vlm.models.encoding import ChatEncoder
from cme_vlm.models.freezing import apply_freezing, parameter_counts
from cme_vlm.models.logprobs import answer_logprobs, count_targets
from cme_vlm.schema import ComponentMode as M
from cme_vlm.schema import FreezingConfig
from cme_vlm.training.losses import sft_loss

CASES = {
    "paper_sft": (M.freeze, M.train, M.train),
    "merger_only": (M.freeze, M.train, M.freeze),
    "all": (M.train, M.train, M.train),
    "lora_vision": (M.lora, M.freeze, M.freeze),
    "lora_merger": (M.freeze, M.lora, M.freeze),
    "lora_lm_train_merger": (M.freeze, M.train, M.lora),
}


def _step(loaded, model):
    """One SGD step of the SFT loss on one record; the names of the parameters it changed."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loaded = copy.copy(loaded)
    loaded.model = model
    batch = ChatEncoder(loaded, 256).encode([Image.new("RGB", (112, 112), (0, 200, 0))], ["Which?"], ["The pancreas."])
    sft_loss(answer_logprobs(model, batch).token_logp, count_targets(batch["labels"])).backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


@functools.cache
def unused(name: str) -> frozenset[str]:
    """Parameters no answer log-prob depends on: the top of a tower whose features come from an inner layer
    (LLaVA-OneVision's final norm; LLaVA-1.5 reads the second-to-last layer)."""
    model = copy.deepcopy(tiny_model(name).model).train()
    return frozenset(n for n, _ in model.named_parameters()) - _step(tiny_model(name), model)


FAMILY_CASES = [(name, case) for name in TINY_FAMILIES for case in CASES
                if not (CASES[case][1] is M.lora and refused(name, Capability.merger_lora))]


@pytest.mark.parametrize(("name", "case"), FAMILY_CASES)
def test_only_intended_parameters_change(name, case):
    tiny_loaded = tiny_model(name)
    freezing = FreezingConfig(**dict(zip(COMPONENTS, CASES[case])))
    model = apply_freezing(copy.deepcopy(tiny_loaded.model).train(), tiny_loaded.adapter, freezing)
    changed = _step(tiny_loaded, model)
    assert {tiny_loaded.adapter.component_of(n) for n in unused(name)} <= {"vision_encoder"}
    for param_name, _ in model.named_parameters():
        component = tiny_loaded.adapter.component_of(param_name)
        mode = getattr(freezing, component)
        expected = mode == M.train or (mode == M.lora and "lora_B" in param_name)  # lora_A gets no gradient while B is 0
        base = re.sub(r"\.lora_[AB]\.\w+\.weight$", ".weight", param_name).removeprefix("base_model.model.")
        expected = expected and base not in unused(name)  # a LoRA matrix on an unused layer gets no gradient either
        assert (param_name in changed) == expected, f"{case}: {param_name} ({component}, {mode.value})"
    counts = parameter_counts(model, tiny_loaded.adapter)
    for component, mode in zip(COMPONENTS, CASES[case]):
        assert (counts[component]["trainable"] > 0) == (mode != M.freeze)

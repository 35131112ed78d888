"""Per freezing mode, exactly the intended parameters change after one optimizer step."""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

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


@pytest.mark.parametrize("case", CASES)
def test_only_intended_parameters_change(tiny_loaded, case):
    freezing = FreezingConfig(**dict(zip(COMPONENTS, CASES[case])))
    model = apply_freezing(copy.deepcopy(tiny_loaded.model).train(), tiny_loaded.adapter, freezing)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loaded = copy.copy(tiny_loaded)
    loaded.model = model
    batch = ChatEncoder(loaded, 256).encode([Image.new("RGB", (112, 112), (0, 200, 0))], ["Which?"], ["The pancreas."])
    sft_loss(answer_logprobs(model, batch).token_logp, count_targets(batch["labels"])).backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    for name, _ in model.named_parameters():
        component = tiny_loaded.adapter.component_of(name)
        mode = getattr(freezing, component)
        expected = mode == M.train or (mode == M.lora and "lora_B" in name)  # lora_A gets no gradient while B is 0
        assert (name in changed) == expected, f"{case}: {name} ({component}, {mode.value})"
    counts = parameter_counts(model, tiny_loaded.adapter)
    for component, mode in zip(COMPONENTS, CASES[case]):
        assert (counts[component]["trainable"] > 0) == (mode != M.freeze)

"""Export a (possibly LoRA-wrapped) model with its processor in Hugging Face format."""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedModel, ProcessorMixin

from cme_vlm import atomic
from cme_vlm.models.loading import ADAPTER_DIRNAME


def export_model(model: PreTrainedModel, processor: ProcessorMixin, folder: str | Path, merge_lora: bool = True) -> Path:
    """Write ``folder`` atomically: weights, config, generation config, tokenizer and processor.

    A peft model is merged into its base when ``merge_lora``; otherwise the base weights go to
    ``folder`` and the adapter to ``folder/adapter`` (``load_model`` applies it on load). The
    model passed in is left as it was.
    """
    folder = Path(folder)
    with atomic.atomic_dir(folder) as tmp:
        if hasattr(model, "peft_config"):
            _export_peft(model, tmp, merge_lora)
        else:
            model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return folder


def _export_peft(model, tmp: Path, merge_lora: bool) -> None:
    import copy

    clone = copy.deepcopy(model)
    if merge_lora:
        clone.merge_and_unload().save_pretrained(tmp)
        return
    clone.save_pretrained(tmp / ADAPTER_DIRNAME, selected_adapters=list(clone.peft_config))
    clone.unload().save_pretrained(tmp)

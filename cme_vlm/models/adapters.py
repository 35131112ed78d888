"""A model family's behaviour: its classes, components, processor and inputs, from its declaration.

The declaration (``cme_vlm.families.Family``) says only where a family differs from
transformers' common layout; the classes come from transformers' auto mappings of its
``model_type``. The collator, packing, log-probs, freezing and the generation engine ask the
adapter and never branch on a family's name.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import transformers
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel, ProcessorMixin
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES
from transformers.models.auto.video_processing_auto import VIDEO_PROCESSOR_MAPPING_NAMES

from cme_vlm.errors import ModelError
from cme_vlm.families import FAMILIES, Family, Positions, family_of_model_type
from cme_vlm.schema import ModelConfig, ModelFamily

COMPONENTS = ("vision_encoder", "merger", "language_model")
IGNORE_INDEX = -100
TOKEN_FIELDS = ("input_ids", "attention_mask")  # besides the family's token types
SEQUENCE_LENGTHS = "sequence_lengths"  # marks a packed batch (cme_vlm.models.packing)
# what the collators and packing add beside the processor's output: none of it is an image's
BATCH_FIELDS = ("labels", "position_ids", SEQUENCE_LENGTHS, "ref_logp_accepted", "ref_logp_rejected")


@dataclass(frozen=True)
class ModelAdapter:
    """What the framework needs to know about one model family."""

    declaration: Family

    @property
    def family(self) -> ModelFamily:
        return self.declaration.name

    @property
    def model_type(self) -> str:
        return self.declaration.model_type

    @property
    def end_token(self) -> str:
        return self.declaration.end_token

    @property
    def mrope(self) -> bool:
        """Whether the decoder takes Qwen-VL's multimodal rotary positions (``get_rope_index``, ``rope_deltas``)."""
        return self.declaration.positions is Positions.mrope

    @property
    def token_fields(self) -> tuple[str, ...]:
        """The per-token inputs of the decoder: ids, mask, and the family's token types if any."""
        types = self.declaration.token_types
        return (*TOKEN_FIELDS, types) if types else TOKEN_FIELDS

    @property
    def config_class(self) -> type[PretrainedConfig]:
        return CONFIG_MAPPING[self.model_type]

    @property
    def model_class(self) -> type[PreTrainedModel]:
        return getattr(transformers, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES[self.model_type])

    def component_of(self, param_name: str) -> str:
        """The component (vision_encoder, merger, language_model) a parameter belongs to."""
        name = _strip_wrappers(param_name)
        for component in ("merger", "vision_encoder", "language_model"):  # a merger may sit inside the tower
            if name.startswith(getattr(self.declaration, component)):
                return component
        raise ValueError(f"parameter '{param_name}' belongs to no known component of {self.family.value}")

    def module_pattern(self, component: str, leaf_names: list[str]) -> str:
        """A regex (peft ``target_modules``) over module names of ``component`` ending in ``leaf_names``.

        No names: the family's default LoRA targets of that component.
        """
        leaves = "|".join(n.replace(".", r"\.") for n in leaf_names or self.declaration.lora_targets[component])
        scope = "|".join(_escaped(p) for p in getattr(self.declaration, component))
        if component == "vision_encoder":  # a merger inside the tower is not the encoder's
            scope = rf"(?!{'|'.join(_escaped(p) for p in self.declaration.merger)})(?:{scope})"
        return rf"(?:{scope})(?:.*\.)?(?:{leaves})"

    def tower(self, model: nn.Module, component: str) -> nn.Module:
        """The module that holds ``component`` (vision_encoder or language_model) of a Hugging Face model."""
        return model.get_submodule(getattr(self.declaration, component)[0].rstrip("."))

    @staticmethod
    def messages(prompt: str, answer: str | None = None) -> list[dict[str, Any]]:
        """A one-image chat: the user turn holds the image and the prompt; the answer is the assistant's."""
        turns: list[dict[str, Any]] = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        if answer is not None:
            turns.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return turns

    def processor_kwargs(self, m: ModelConfig) -> dict[str, Any]:
        """``model.processor``, with the image size from ``model.min_pixels`` / ``max_pixels`` where the family resizes by pixels."""
        if not self.declaration.pixel_resolution:
            return dict(m.processor)
        return {"size": {"shortest_edge": m.min_pixels, "longest_edge": m.max_pixels}, **m.processor}

    def build_processor(self, tokenizer: Any, kwargs: dict[str, Any]) -> ProcessorMixin:
        """The family's own processor around ``tokenizer`` (the offline one), for a model built from config.

        ``kwargs`` the processor takes (e.g. ``image_seq_length``) go to it, the rest to its image processor.
        """
        processor_class = getattr(transformers, PROCESSOR_MAPPING_NAMES[self.model_type])
        own = set(inspect.signature(processor_class.__init__).parameters)
        parts: dict[str, Any] = {"tokenizer": tokenizer}
        image_class = getattr(transformers, IMAGE_PROCESSOR_MAPPING_NAMES[self.model_type]["torchvision"])
        parts["image_processor"] = image_class(**{k: v for k, v in kwargs.items() if k not in own})
        if "video_processor" in processor_class.get_attributes():
            parts["video_processor"] = getattr(transformers, VIDEO_PROCESSOR_MAPPING_NAMES[self.model_type]["torchvision"])()
        return processor_class(**parts, **{k: v for k, v in kwargs.items() if k in own},
                               chat_template=self.declaration.offline.chat_template)

    def image_fields(self, batch: dict[str, Any]) -> list[str]:
        """The tensors of ``batch`` (a processor's or collator's output) that carry the images rather than the sequences."""
        return [k for k, v in batch.items() if k not in (*self.token_fields, *BATCH_FIELDS) and isinstance(v, Tensor)]


def _escaped(prefix: str) -> str:
    return prefix.replace(".", r"\.")


def _strip_wrappers(name: str) -> str:
    """Drop the prefixes peft and DDP add around the Hugging Face model."""
    for prefix in ("module.", "base_model.model."):
        name = name.removeprefix(prefix)
    return name


ADAPTERS: dict[ModelFamily, ModelAdapter] = {name: ModelAdapter(f) for name, f in FAMILIES.items()}


def adapter_for(family: ModelFamily | str) -> ModelAdapter:
    return ADAPTERS[ModelFamily(family)]


def adapter_for_model_type(model_type: str) -> ModelAdapter | None:
    found = family_of_model_type(model_type)
    return ADAPTERS[found.name] if found else None


def adapter_of(config: PretrainedConfig) -> ModelAdapter:
    """The adapter of a Hugging Face model's config; a model of no declared family is refused."""
    adapter = adapter_for_model_type(config.model_type)
    if adapter is None:
        known = ", ".join(f.model_type for f in FAMILIES.values())
        raise ModelError(f"model type '{config.model_type}' has no family declaration (known: {known}); declare one "
                         "in cme_vlm/families.py")
    return adapter

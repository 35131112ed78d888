"""One adapter per model family: its classes, where its components live, its chat format.

Every family here keeps the vision tower at ``model.visual`` (with the vision-language
merger inside it), the decoder at ``model.language_model`` and the output head at
``lm_head``; the adapters differ in classes, merger names and image geometry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import (
    PretrainedConfig,
    PreTrainedModel,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)

from cme_vlm.schema import ModelFamily

COMPONENTS = ("vision_encoder", "merger", "language_model")
IGNORE_INDEX = -100

# Qwen's own chat format (system turn omitted), used with the offline tokenizer.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class ModelAdapter:
    """What the framework needs to know about one model family."""

    family: ModelFamily
    model_type: str  # config.json's model_type
    model_class: type[PreTrainedModel]
    config_class: type[PretrainedConfig]
    processor_class: type[ProcessorMixin]
    merger_prefixes: tuple[str, ...] = ("model.visual.merger.",)
    image_token: str = "<|image_pad|>"
    end_token: str = "<|im_end|>"
    patch_size: int = 14

    def component_of(self, param_name: str) -> str:
        """The component (vision_encoder, merger, language_model) a parameter belongs to."""
        name = _strip_wrappers(param_name)
        if name.startswith(self.merger_prefixes):
            return "merger"
        if name.startswith("model.visual."):
            return "vision_encoder"
        if name.startswith(("model.language_model.", "lm_head.")):
            return "language_model"
        raise ValueError(f"parameter '{param_name}' belongs to no known component of {self.family.value}")

    def module_pattern(self, component: str, leaf_names: list[str]) -> str:
        """A regex (peft ``target_modules``) over module names of ``component`` ending in ``leaf_names``."""
        leaves = "|".join(n.replace(".", r"\.") for n in leaf_names)
        mergers = "|".join(p.removeprefix("model.visual.").replace(".", r"\.") for p in self.merger_prefixes)
        scope = {
            "vision_encoder": rf"model\.visual\.(?!{mergers})",
            "merger": rf"model\.visual\.(?:{mergers})",
            "language_model": r"model\.language_model\.",
        }[component]
        return rf"{scope}(?:.*\.)?(?:{leaves})"

    @staticmethod
    def messages(prompt: str, answer: str | None = None) -> list[dict[str, Any]]:
        """A one-image chat: the user turn holds the image and the prompt; the answer is the assistant's."""
        turns: list[dict[str, Any]] = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        if answer is not None:
            turns.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return turns

    def image_processor(self, min_pixels: int, max_pixels: int) -> Qwen2VLImageProcessor:
        return Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=self.patch_size)

    def build_processor(self, tokenizer: Any, min_pixels: int, max_pixels: int) -> ProcessorMixin:
        """A processor around ``tokenizer`` (the offline one) with this family's image geometry."""
        tokenizer.chat_template = CHAT_TEMPLATE
        return self.processor_class(
            image_processor=self.image_processor(min_pixels, max_pixels),
            tokenizer=tokenizer,
            video_processor=Qwen2VLVideoProcessor(patch_size=self.patch_size),
            chat_template=CHAT_TEMPLATE,
        )


def _strip_wrappers(name: str) -> str:
    """Drop the prefixes peft and DDP add around the Hugging Face model."""
    for prefix in ("module.", "base_model.model."):
        name = name.removeprefix(prefix)
    return name


ADAPTERS: dict[ModelFamily, ModelAdapter] = {
    ModelFamily.qwen2_5_vl: ModelAdapter(
        ModelFamily.qwen2_5_vl, "qwen2_5_vl", Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLConfig,
        Qwen2_5_VLProcessor,
    ),
    ModelFamily.qwen2_vl: ModelAdapter(
        ModelFamily.qwen2_vl, "qwen2_vl", Qwen2VLForConditionalGeneration, Qwen2VLConfig, Qwen2VLProcessor,
    ),
    ModelFamily.qwen3_vl: ModelAdapter(
        ModelFamily.qwen3_vl, "qwen3_vl", Qwen3VLForConditionalGeneration, Qwen3VLConfig, Qwen3VLProcessor,
        merger_prefixes=("model.visual.merger.", "model.visual.deepstack_merger_list."),
        patch_size=16,
    ),
}


def adapter_for(family: ModelFamily | str) -> ModelAdapter:
    return ADAPTERS[ModelFamily(family)]


def adapter_for_model_type(model_type: str) -> ModelAdapter | None:
    return next((a for a in ADAPTERS.values() if a.model_type == model_type), None)

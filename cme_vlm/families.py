"""Model families: what each declares beyond transformers' common image-text-to-text layout.

transformers 5 builds every family from its ``model_type`` (``AutoConfig``,
``AutoModelForImageTextToText``, ``AutoProcessor``) and keeps a model's parts at
``model.vision_tower`` (vision encoder), ``model.multi_modal_projector`` (the merger into the
language model's space), ``model.language_model`` (decoder) and ``lm_head``. A ``Family``
names only where it differs: its component paths, its position scheme, the per-token field
its processor adds, its end-of-turn token, its default LoRA targets, what it cannot do (with the
reason), and, for the random-weight tiny models built without a download, its special tokens
and chat format (``OfflineFormat``; a real model brings its own from its folder).

This module is plain data, so the config check (``cme_vlm.config``) refuses an impossible
setting before any stage runs; ``cme_vlm.models.adapters`` gives the behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from cme_vlm.schema import ModelFamily


class Positions(str, Enum):
    """How the decoder's rotary positions are counted."""

    one_d = "1d"  # one position per token
    mrope = "mrope"  # Qwen-VL's (temporal, height, width) positions from ``get_rope_index``, kept as ``rope_deltas``


class Capability(str, Enum):
    """What a family may be unable to do; each maps to the config keys that ask for it."""

    padding_free = "padding_free"  # sft.padding_free / dpo.padding_free
    merger_lora = "merger_lora"  # {sft,dpo}.freezing.merger=lora


@dataclass(frozen=True)
class OfflineFormat:
    """The tokens and chat format of a model built from config with the offline tokenizer (tests, demo).

    ``special_tokens`` follow the learned vocabulary in this order; ``named_tokens`` become
    tokenizer attributes the family's processor reads (``tokenizer.image_token`` ...);
    ``config_tokens`` set the model config's token ids (keys of the config, ``text_config.`` for
    the decoder's). ``first_special_id`` pads the vocabulary so the special tokens sit at a real
    checkpoint's ids when the architecture's vocabulary is that large (the real-size configs).
    """

    special_tokens: tuple[str, ...]
    named_tokens: dict[str, str]
    pad_token: str
    chat_template: str
    config_tokens: dict[str, str]
    bos_token: str | None = None
    first_special_id: int = 0


@dataclass(frozen=True)
class Family:
    """One model family, as it differs from transformers' common layout."""

    name: ModelFamily
    model_type: str  # config.json's model_type; transformers' auto classes build everything from it
    end_token: str  # closes an assistant turn; answers are learned up to and including it
    offline: OfflineFormat
    vision_encoder: tuple[str, ...] = ("model.vision_tower.",)
    merger: tuple[str, ...] = ("model.multi_modal_projector.",)  # checked first: a merger may sit inside the tower
    language_model: tuple[str, ...] = ("model.language_model.", "lm_head.")
    positions: Positions = Positions.one_d
    token_types: str | None = None  # per-token field of the processor that the decoder reads
    pixel_resolution: bool = False  # the image processor takes model.min_pixels / max_pixels
    lora_targets: dict[str, tuple[str, ...]] = field(default_factory=dict)  # per component, module name endings
    refuses: dict[Capability, str] = field(default_factory=dict)  # what it cannot do, and why


QWEN_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
QWEN_FIRST_SPECIAL_ID = 151643  # where Qwen2/2.5/3-VL put <|endoftext|>


def contents(image: str) -> str:
    """A chat template's rendering of one message's content, in order: its text, or ``image`` for an image."""
    return (
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for c in message['content'] %}"
        f"{{% if c['type'] == 'image' %}}{image}"
        "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    )


def chatml(image: str) -> str:
    """The ChatML turns Qwen-based models use (system turn omitted), with ``image`` for the image."""
    return (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n" + contents(image)
        + "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


QWEN_OFFLINE = OfflineFormat(
    special_tokens=QWEN_TOKENS,
    named_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    pad_token="<|endoftext|>",
    chat_template=chatml("<|vision_start|><|image_pad|><|vision_end|>"),
    config_tokens={"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
                   "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>",
                   "text_config.bos_token_id": "<|endoftext|>", "text_config.eos_token_id": "<|im_end|>",
                   "text_config.pad_token_id": "<|endoftext|>"},
    first_special_id=QWEN_FIRST_SPECIAL_ID,
)
QWEN_VISION = ("model.visual.",)
QWEN_LORA = {"vision_encoder": ("attn.qkv", "attn.proj"), "merger": ("mlp.0", "mlp.2"),
             "language_model": ("q_proj", "k_proj", "v_proj", "o_proj")}
QWEN3_LORA = {**QWEN_LORA, "merger": ("linear_fc1", "linear_fc2")}
ATTENTION_LORA = ("q_proj", "k_proj", "v_proj", "o_proj")
SIGLIP_LORA = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")
QWEN_TEXT_TOKENS = {"text_config.bos_token_id": "<|endoftext|>", "text_config.eos_token_id": "<|im_end|>",
                    "text_config.pad_token_id": "<|endoftext|>"}


def _qwen_vl(name: ModelFamily, **changes: Any) -> Family:
    """A Qwen-VL-like family: tower at ``model.visual`` with the merger inside, mRoPE, sizes by pixel count."""
    qwen = {"vision_encoder": QWEN_VISION, "merger": ("model.visual.merger.",), "positions": Positions.mrope,
            "token_types": "mm_token_type_ids", "pixel_resolution": True, "lora_targets": QWEN_LORA}
    return Family(name, name.value, "<|im_end|>", QWEN_OFFLINE, **{**qwen, **changes})


FAMILIES: dict[ModelFamily, Family] = {
    ModelFamily.qwen2_5_vl: _qwen_vl(ModelFamily.qwen2_5_vl),
    ModelFamily.qwen2_vl: _qwen_vl(ModelFamily.qwen2_vl),
    ModelFamily.qwen3_vl: _qwen_vl(
        ModelFamily.qwen3_vl, merger=("model.visual.merger.", "model.visual.deepstack_merger_list."),
        lora_targets=QWEN3_LORA,
    ),
    ModelFamily.qwen3_5: _qwen_vl(
        ModelFamily.qwen3_5,
        # three of four decoder layers are Gated DeltaNet (linear attention): LoRA reaches them through these
        lora_targets={**QWEN3_LORA, "language_model": (*ATTENTION_LORA, "in_proj_qkv", "in_proj_z", "out_proj")},
        refuses={Capability.padding_free: (
            "its Gated DeltaNet layers carry a recurrent state and a causal convolution along the row, and "
            "transformers' implementation does not restart them at a packed sequence's start, so one sequence "
            "would leak into the next; train it padded"
        )},
    ),
    ModelFamily.gemma3: Family(
        ModelFamily.gemma3, "gemma3", "<end_of_turn>",
        OfflineFormat(
            special_tokens=("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                            "<end_of_image>", "<image_soft_token>"),
            named_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                          "image_token": "<image_soft_token>"},
            pad_token="<pad>", bos_token="<bos>",
            chat_template=(
                "{{ bos_token }}{% for message in messages %}<start_of_turn>"
                "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n" + contents("<start_of_image>")
                + "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
            ),
            config_tokens={"image_token_id": "<image_soft_token>", "boi_token_id": "<start_of_image>",
                           "eoi_token_id": "<end_of_image>", "text_config.bos_token_id": "<bos>",
                           "text_config.eos_token_id": "<end_of_turn>", "text_config.pad_token_id": "<pad>"},
        ),
        # the image tokens attend to each other both ways (token_type_ids 1), the text causally
        token_types="token_type_ids",
        lora_targets={"vision_encoder": SIGLIP_LORA, "language_model": ATTENTION_LORA},
        refuses={
            Capability.merger_lora: (
                "its projector multiplies by a weight matrix directly (Gemma3MultiModalProjector."
                "mm_input_projection_weight), with no linear layer for peft to wrap; train or freeze the merger"
            ),
            Capability.padding_free: (
                "in its sliding-window layers transformers looks the bidirectional image blocks up by each packed "
                "sequence's own positions instead of the row's (masking_utils.create_causal_mask remaps positions "
                "before its or_mask_function), so a packed row's image tokens would attend to the wrong tokens; "
                "train it padded (flash-attention, which packing is for, is not supported by Gemma 3 either)"
            ),
        },
    ),
    ModelFamily.internvl: Family(
        ModelFamily.internvl, "internvl", "<|im_end|>",
        OfflineFormat(
            special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>",
                            "<video>"),
            named_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                          "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
            pad_token="<|endoftext|>", chat_template=chatml("<IMG_CONTEXT>\n"),
            config_tokens={"image_token_id": "<IMG_CONTEXT>", **QWEN_TEXT_TOKENS},
        ),
        lora_targets={"vision_encoder": ("attention.q_proj", "attention.k_proj", "attention.v_proj",
                                         "attention.projection_layer"),
                      "merger": ("linear_1", "linear_2"), "language_model": ATTENTION_LORA},
    ),
    ModelFamily.llava_onevision: Family(
        ModelFamily.llava_onevision, "llava_onevision", "<|im_end|>",
        OfflineFormat(
            special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"),
            named_tokens={"image_token": "<image>", "video_token": "<video>"},
            pad_token="<|endoftext|>", chat_template=chatml("<image>\n"),
            config_tokens={"image_token_id": "<image>", "video_token_id": "<video>", **QWEN_TEXT_TOKENS},
        ),
        # the learned row separator of its any-resolution grids belongs to the projection into the decoder
        merger=("model.multi_modal_projector.", "model.image_newline"),
        lora_targets={"vision_encoder": SIGLIP_LORA, "merger": ("linear_1", "linear_2"),
                      "language_model": ATTENTION_LORA},
    ),
    ModelFamily.smolvlm: Family(
        ModelFamily.smolvlm, "smolvlm", "<end_of_utterance>",
        OfflineFormat(
            special_tokens=("<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<image>",
                            "<fake_token_around_image>", "<global-img>",
                            *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))),
            named_tokens={"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
                          "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"},
            pad_token="<|endoftext|>", bos_token="<|im_start|>",
            chat_template=(  # SmolVLM's own format: "User:<image>prompt<end_of_utterance>\nAssistant: answer"
                "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
                "{% if message['content'] is string %}{{ ': ' + message['content'] }}"
                "{% else %}{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
                "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
                "{% elif c['type'] == 'image' %}<image>{% endif %}{% endfor %}{% endif %}"
                "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
            ),
            config_tokens={"image_token_id": "<image>", "text_config.bos_token_id": "<|im_start|>",
                           "text_config.eos_token_id": "<end_of_utterance>", "text_config.pad_token_id": "<|endoftext|>"},
        ),
        vision_encoder=("model.vision_model.",), merger=("model.connector.",),
        language_model=("model.text_model.", "lm_head."),
        lora_targets={"vision_encoder": SIGLIP_LORA, "merger": ("modality_projection.proj",),
                      "language_model": ATTENTION_LORA},
    ),
    ModelFamily.llava: Family(
        ModelFamily.llava, "llava", "</s>",
        OfflineFormat(
            special_tokens=("<unk>", "<s>", "</s>", "<image>"), named_tokens={"image_token": "<image>"},
            pad_token="<unk>", bos_token="<s>",
            chat_template=(  # LLaVA-1.5's own: "USER: <image>\nprompt ASSISTANT: answer", no end token
                "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
                "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>\n"
                "{% elif c['type'] == 'text' %}{{ c['text'] + ' ' }}{% endif %}{% endfor %}{% endfor %}"
                "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
            ),
            config_tokens={"image_token_id": "<image>", "text_config.bos_token_id": "<s>",
                           "text_config.eos_token_id": "</s>", "text_config.pad_token_id": "<unk>"},
        ),
        lora_targets={"vision_encoder": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                         "self_attn.out_proj"),
                      "merger": ("linear_1", "linear_2"), "language_model": ATTENTION_LORA},
    ),
}


def family(name: ModelFamily | str) -> Family:
    return FAMILIES[ModelFamily(name)]


def family_of_model_type(model_type: str) -> Family | None:
    return next((f for f in FAMILIES.values() if f.model_type == model_type), None)


def refusals(name: ModelFamily, wanted: dict[Capability, list[str]]) -> list[str]:
    """One line per capability the config asks for (``wanted``: capability -> the keys asking) that the family refuses."""
    refused = family(name).refuses
    return [f"{', '.join(keys)}: model family {name.value} cannot do this: {refused[cap]}"
            for cap, keys in wanted.items() if keys and cap in refused]

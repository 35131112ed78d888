"""Load a model and its processor: from a local folder (offline), a hub id, or built from config.

A model built from ``cfg.model.architecture`` gets random weights seeded by ``cfg.seed`` and
the offline tokenizer, so the "base" model of a run is reproducible without any download.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoProcessor, PreTrainedModel, ProcessorMixin

from cme_vlm.errors import ModelError
from cme_vlm.models.adapters import ModelAdapter, adapter_for, adapter_for_model_type
from cme_vlm.models.attention import use_fast_attention
from cme_vlm.models.dtypes import cast_floating
from cme_vlm.models.tokenizer import train_offline_tokenizer
from cme_vlm.schema import ExperimentConfig, ModelConfig

ADAPTER_DIRNAME = "adapter"  # a LoRA adapter kept beside exported base weights


@dataclass
class LoadedModel:
    model: PreTrainedModel
    processor: ProcessorMixin
    adapter: ModelAdapter

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer


def resolve_dtype(name: str) -> torch.dtype:
    """``auto``: bf16 where a GPU is present, fp32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    try:
        return getattr(torch, name)
    except AttributeError:
        raise ModelError(f"model.dtype='{name}' is not a torch dtype. Use auto, float32, bfloat16 or float16.") from None


def load_model(cfg: ExperimentConfig, path: str | Path | None = None) -> LoadedModel:
    """The model of ``path`` (an exported folder) if given, else of ``cfg.model``."""
    adapter = adapter_for(cfg.model.family)
    source = str(path) if path else cfg.model.path
    if not source:
        loaded = build_from_config(cfg, adapter)
    else:
        loaded = _from_pretrained(source, cfg.model, adapter, "--model" if path else "model.path")
    use_fast_attention(loaded.model)
    return loaded


def build_from_config(cfg: ExperimentConfig, adapter: ModelAdapter) -> LoadedModel:
    """A model of ``cfg.model.architecture`` with random weights seeded by ``cfg.seed``, and the offline tokenizer."""
    m = cfg.model
    model_vocab = m.architecture.get("text_config", {}).get("vocab_size", 0)
    tokenizer = train_offline_tokenizer(cfg.anatomy, cfg.data.prompts, m.offline_vocab_size, adapter.declaration, model_vocab)
    processor = adapter.build_processor(tokenizer, adapter.processor_kwargs(m))
    config = adapter.config_class(**_with_token_ids(m.architecture, adapter, tokenizer))
    config._attn_implementation = m.attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = adapter.model_class(config)
        _randomise_zero_matrices(model, getattr(config, "initializer_range", 0.02))
    model = cast_floating(model, resolve_dtype(m.dtype))
    _set_generation_tokens(model, adapter, tokenizer)
    return LoadedModel(model.eval(), processor, adapter)


def _randomise_zero_matrices(model: PreTrainedModel, std: float) -> None:
    """Weight matrices transformers initialises to zero (Gemma 3's projector, InternViT's position embeddings) get
    ``N(0, std²)`` like the others, so a random model's image reaches its decoder."""
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2 and not param.any():
                param.normal_(0.0, std)


def _with_token_ids(architecture: dict[str, Any], adapter: ModelAdapter, tokenizer: Any) -> dict[str, Any]:
    """The architecture with the vocabulary size and the family's token ids taken from the tokenizer."""
    architecture = copy.deepcopy(architecture)  # transformers fills nested dicts in place; keep cfg intact
    text = architecture.setdefault("text_config", {})
    text["vocab_size"] = max(text.get("vocab_size", 0), len(tokenizer))
    for key, token in adapter.declaration.offline.config_tokens.items():
        section, leaf = (text, key.removeprefix("text_config.")) if key.startswith("text_config.") else (architecture, key)
        section[leaf] = tokenizer.convert_tokens_to_ids(token)
    return architecture


def _set_generation_tokens(model: PreTrainedModel, adapter: ModelAdapter, tokenizer: Any) -> None:
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(adapter.end_token)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = model.config.get_text_config().bos_token_id


def _is_local(source: str) -> bool:
    return os.path.isabs(source) or source.startswith((".", "~")) or Path(source).exists() or source.count("/") != 1


def _from_pretrained(source: str, m: ModelConfig, adapter: ModelAdapter, key: str) -> LoadedModel:
    folder = Path(source).expanduser()
    if _is_local(source) and not folder.is_dir():
        raise ModelError(
            f"{key}: model folder '{source}' does not exist. Point {key} at a local folder holding "
            "config.json and *.safetensors (e.g. a downloaded Qwen/Qwen2.5-VL-7B-Instruct or google/medgemma-4b-it), "
            "or leave "
            "model.path empty to build the model from model.architecture."
        )
    if folder.is_dir():
        _check_family(folder, adapter, key)
    try:
        processor = AutoProcessor.from_pretrained(source, **adapter.processor_kwargs(m))
    except OSError as e:
        raise _unreachable(source, key, e) from e
    model = _load_weights(source, m, adapter, key)
    if (folder / ADAPTER_DIRNAME).is_dir():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(folder / ADAPTER_DIRNAME)).merge_and_unload()
    return LoadedModel(model.eval(), processor, adapter)


def _load_weights(source: str, m: ModelConfig, adapter: ModelAdapter, key: str) -> PreTrainedModel:
    try:
        return adapter.model_class.from_pretrained(
            source, dtype=resolve_dtype(m.dtype), attn_implementation=m.attn_implementation
        )
    except OSError as e:
        if Path(source).is_dir():
            raise _corrupt(source, key, e) from e
        raise _unreachable(source, key, e) from e
    except Exception as e:  # safetensors raises its own error types for a damaged file
        raise _corrupt(source, key, e) from e


def _check_family(folder: Path, adapter: ModelAdapter, key: str) -> None:
    config = folder / "config.json"
    if not config.is_file():
        raise ModelError(f"{key}: '{folder}' has no config.json, so it is not a Hugging Face model folder. "
                         "Point it at a folder a stage exported (e.g. 03-sft/model) or a complete downloaded model.")
    model_type = json.loads(config.read_text()).get("model_type", "?")
    if model_type != adapter.model_type:
        found = adapter_for_model_type(model_type)
        hint = f"set model.family={found.family.value}" if found else "use a supported family"
        raise ModelError(
            f"{key}: '{folder}' holds a '{model_type}' model but model.family is '{adapter.family.value}'. "
            f"Select the matching model config or {hint}."
        )


def _unreachable(source: str, key: str, e: Exception) -> ModelError:
    return ModelError(
        f"{key}: cannot load '{source}' ({type(e).__name__}): the hub is unreachable or the id is wrong "
        f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}). Download the weights once elsewhere and "
        f"set {key}=/path/to/local/folder (model.path=... on the command line)."
    )


def _corrupt(source: str, key: str, e: Exception) -> ModelError:
    return ModelError(
        f"{key}: the weights in '{source}' cannot be read ({type(e).__name__}: {str(e)[:200]}). "
        "A weight file is truncated or corrupt: copy the folder again (check the file sizes)."
    )

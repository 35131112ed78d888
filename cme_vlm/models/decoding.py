"""The decode engine of every generation path: records prefilled once, any number of draws continued from them.

``SharedPrefix`` runs the vision encoder and the prompt prefill of a batch of records once and
keeps the KV cache; ``decode`` continues any rows from it (a record with its own sampling
setting, or greedy) in one batched transformers ``generate``, so the K candidates of a record
cost one prefill, not K. The prefix holds every prompt token but the last: ``generate`` feeds
that last token itself, which is how it continues from a cache, and counts ``max_new_tokens``
from the whole prompt. The multimodal rotary offsets (``rope_deltas``) that Qwen-VL models keep
from their prefill are copied to the continued rows.

The KV cache and the compiled decode step follow ``GenerationConfig`` (``DecodeMode``):
transformers compiles the model's forward for the decode steps when the cache is static
(``torch.compile`` mode ``reduce-overhead``: CUDA graphs), and runs the prefill eagerly.
The step is compiled with dynamic shapes, so one graph serves every batch size above one and
every cache length (batch one is a graph of its own: torch specialises sizes of one), and
dynamo keeps it for the process: a second model of the same architecture reuses it. Static
caches come from ``StaticCaches``, which keeps them across ``generate`` calls, so the CUDA
graph recorded for a shape replays on the same buffers instead of being recorded again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformers import CompileConfig, DynamicCache, LogitsProcessorList, StaticCache

from cme_vlm.models.cache_rows import dynamic_rows, static_rows
from cme_vlm.models.loading import LoadedModel
from cme_vlm.models.logprobs import hf_model
from cme_vlm.models.row_sampler import RowSampler
from cme_vlm.schema import CacheKind, GenerationConfig, SamplingSetting, Switch

CACHE_BLOCK = 64  # a static cache is sized in blocks, so prompts of nearby lengths share one compiled shape


@dataclass(frozen=True)
class DecodeMode:
    """The cache and compilation ``GenerationConfig`` resolves to on one device."""

    static_cache: bool
    compiled: bool

    @classmethod
    def resolve(cls, generation: GenerationConfig, device: torch.device) -> DecodeMode:
        """``auto`` is the static cache and the compiled step on CUDA, the dynamic cache and eager steps elsewhere.

        ``compile=always`` with ``cache=dynamic`` is refused when the config is loaded (``cme_vlm.config``).
        """
        cuda = device.type == "cuda"
        static = generation.cache is CacheKind.static or (
            generation.cache is CacheKind.auto and (cuda or generation.compile is Switch.always)
        )
        compiled = generation.compile is Switch.always or (generation.compile is Switch.auto and cuda and static)
        return cls(static, compiled)

    def generate_kwargs(self, device: torch.device) -> dict[str, Any]:
        """What ``generate`` needs to compile the decode step, or not to."""
        if not self.compiled:
            return {"disable_compile": True}  # transformers otherwise compiles any static-cache decode on CUDA
        config = CompileConfig(dynamic=True)
        # transformers' own switch for compiling off CUDA (its default is CUDA-like devices only)
        config._compile_all_devices = device.type != "cuda"
        return {"compile_config": config}


@dataclass(frozen=True)
class Draw:
    """One answer to decode: the record (its index in the prefix) it continues, and its setting (None: greedy)."""

    record: int
    setting: SamplingSetting | None = None


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """``model`` in eval mode without gradients, restored afterwards (the validation sampler calls mid-training)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _cache_length(tokens: int) -> int:
    return -(-tokens // CACHE_BLOCK) * CACHE_BLOCK


class StaticCaches:
    """Static KV caches of one model kept across ``generate`` calls, the ``keep`` most recently used shapes.

    A cache handed out again is emptied (``reset``), so it is used exactly as a new one, at the same addresses.
    """

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self.caches: OrderedDict[tuple[int, int], StaticCache] = OrderedDict()

    def get(self, config: Any, rows: int, length: int) -> StaticCache:
        """An empty cache of ``rows`` rows with room for ``length`` tokens (rounded up to ``CACHE_BLOCK``)."""
        key = (rows, _cache_length(length))
        cache = self.caches.pop(key, None)
        if cache is None:
            cache = StaticCache(config=config, max_cache_len=key[1])
        else:
            cache.reset()
        self.caches[key] = cache
        while len(self.caches) > self.keep:
            self.caches.popitem(last=False)
        return cache


class SharedPrefix:
    """A batch of encoded records (``inputs``: the processor's left-padded output), prefilled once.

    ``caches``: where continued static caches come from (a pool shared by the caller's batches; default its own).
    """

    def __init__(self, loaded: LoadedModel, inputs: dict[str, torch.Tensor], generation: GenerationConfig,
                 caches: StaticCaches | None = None) -> None:
        self.loaded = loaded
        self.inputs = {k: v.to(loaded.model.device) for k, v in inputs.items()}
        self.mode = DecodeMode.resolve(generation, loaded.model.device)
        self.caches = caches or StaticCaches()
        self.cache = DynamicCache(config=loaded.model.config)
        adapter = loaded.adapter
        head = {k: self.inputs[k][:, :-1] for k in adapter.token_fields}  # per-token inputs, cut before the last token
        images = {k: self.inputs[k] for k in adapter.image_fields(self.inputs)}
        head["position_ids"] = hf_model(loaded.model)._prepare_position_ids_for_generation(
            head["input_ids"], {**head, **images}
        )
        with evaluating(loaded.model):
            loaded.model(**head, **images, cache=self.cache, use_cache=True, logits_to_keep=1)
        self.rope_deltas = hf_model(loaded.model).model.rope_deltas if adapter.mrope else None

    def _continued_cache(self, rows: torch.Tensor, length: int) -> DynamicCache | StaticCache:
        """A cache whose row ``j`` holds the prefix of record ``rows[j]``, with room for ``length`` tokens."""
        if self.mode.static_cache:
            return static_rows(self.cache, rows, self.caches.get(self.loaded.model.config, len(rows), length))
        return dynamic_rows(self.cache, rows)

    def new_tokens(self, draws: Sequence[Draw], max_new_tokens: int) -> torch.Tensor:
        """``[len(draws), n <= max_new_tokens]`` new token ids; a finished row is padded after its end token."""
        model = self.loaded.model
        rows = torch.tensor([d.record for d in draws], device=model.device)
        ids, mask = self.inputs["input_ids"][rows], self.inputs["attention_mask"][rows]
        cache = self._continued_cache(rows, ids.shape[1] + max_new_tokens)
        if self.rope_deltas is not None:
            hf_model(model).model.rope_deltas = self.rope_deltas[rows]
        settings = [d.setting for d in draws]
        sampler = [RowSampler(settings, model.device)] if any(s is not None for s in settings) else []
        with evaluating(model):
            out = model.generate(
                input_ids=ids, attention_mask=mask, cache=cache, max_new_tokens=max_new_tokens,
                do_sample=False, temperature=None, top_p=None, top_k=None,
                logits_processor=LogitsProcessorList(sampler), **self.mode.generate_kwargs(model.device),
            )
        return out[:, ids.shape[1]:]

    def answers(self, draws: Sequence[Draw], max_new_tokens: int) -> list[str]:
        """The text of each draw, special tokens dropped."""
        tokens = self.new_tokens(draws, max_new_tokens)
        return [t.strip() for t in self.loaded.processor.batch_decode(tokens, skip_special_tokens=True)]

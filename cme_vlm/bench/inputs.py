"""Synthetic benchmark batches of exact shapes, encoded by the project's own collator.

A random image of ``bench.image_side`` pixels, a prompt of exactly ``bench.prompt_tokens``
text tokens and answers of exactly ``bench.answer_tokens`` text tokens (the end token comes on
top) go through ``ChatEncoder`` (SFT) or ``collate_pairs`` (DPO), so the benchmark times the
sequences training really sees. ``SequenceShape`` counts what the collator produced.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from cme_vlm.errors import ConfigError
from cme_vlm.models.adapters import IGNORE_INDEX
from cme_vlm.models.encoding import ChatEncoder, collate_pairs
from cme_vlm.models.loading import LoadedModel
from cme_vlm.schema import ExperimentConfig

FILLER = " a"  # one token in a byte-level BPE trained on English text; tops a text up to its length


@dataclass(frozen=True)
class SequenceShape:
    """Token counts of one encoded batch, all read from the collator's output."""

    sequences: int  # rows of input_ids (2B for B pairs)
    images_encoded: int  # images the vision encoder runs on
    patches: int  # vision-encoder positions (before the merger; a tiling's padding tiles included)
    image_tokens: int  # image placeholder tokens over all sequences
    answer_tokens: int  # labelled tokens (answer + end token) over all sequences
    tokens: int  # all non-padding tokens over all sequences
    sequence_length: int  # padded length T

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def exact_text(tokenizer: Any, words: list[str], n_tokens: int) -> str:
    """Words (each with a leading space) cycled until the text is exactly ``n_tokens`` tokens long."""
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    pieces, total = [], 0
    for word in words * (n_tokens // max(len(words), 1) + 1):
        piece = " " + word if pieces else word  # the byte-level pre-tokenizer splits before each space
        size = count(piece)
        if total + size > n_tokens:
            break
        pieces.append(piece)
        total += size
    text = "".join(pieces) + FILLER * (n_tokens - total)
    if count(text) != n_tokens:
        raise ConfigError(
            f"cannot write a text of exactly {n_tokens} tokens with this tokenizer (got {count(text)}). "
            "Change bench.prompt_tokens / bench.answer_tokens by one, or use the offline tokenizer."
        )
    return text


def _words(cfg: ExperimentConfig) -> tuple[list[str], list[str]]:
    """Prompt words from the first template; answer words from the registry's facts."""
    prompt = cfg.data.prompts.templates[0].split()
    facts = [w for s in cfg.anatomy.structures.values() for f in s.facts for w in f.text.split()]
    return prompt, facts or prompt


def random_image(side: int, seed: int) -> Image.Image:
    """Uniform noise: never zeros, so nothing runs faster than on a real frame."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def bench_texts(cfg: ExperimentConfig, loaded: LoadedModel, n_answers: int) -> tuple[str, list[str]]:
    """The prompt and ``n_answers`` different answers of the configured token counts."""
    b = cfg.bench
    prompt_words, answer_words = _words(cfg)
    rng = np.random.default_rng(b.seed)
    prompt = exact_text(loaded.tokenizer, prompt_words, b.prompt_tokens)
    answers = [exact_text(loaded.tokenizer, list(rng.permutation(answer_words)), b.answer_tokens) for _ in range(n_answers)]
    return prompt, answers


def _vision_positions(loaded: LoadedModel, pixels: Any) -> int:
    """Positions the vision tower runs on: Qwen-VL's pixels come as one row per patch, the others as images or tiles."""
    if pixels.ndim == 2:
        return int(pixels.shape[0])
    patch = loaded.model.config.vision_config.patch_size
    side = patch[0] if isinstance(patch, (list, tuple)) else patch
    return int(pixels.numel() // (pixels.shape[-3] * side * side))


def sequence_shape(loaded: LoadedModel, batch: dict[str, Any], images: int) -> SequenceShape:
    """Count what the collator produced for ``images`` images; the patches are those the vision encoder will see."""
    return SequenceShape(
        sequences=int(batch["input_ids"].shape[0]),
        images_encoded=images,
        patches=_vision_positions(loaded, batch["pixel_values"]),
        image_tokens=int((batch["input_ids"] == loaded.model.config.image_token_id).sum()),
        answer_tokens=int((batch["labels"] != IGNORE_INDEX).sum()),
        tokens=int(batch["attention_mask"].sum()),
        sequence_length=int(batch["input_ids"].shape[1]),
    )


def _check_answers(cfg: ExperimentConfig, shape: SequenceShape, max_length: int) -> None:
    """Every answer must survive the collator whole: a sequence as long as ``max_length`` had its tail cut.

    (Counting the answer's tokens would not tell: a chat template may join its first word to a space before it.)
    """
    if shape.sequence_length >= max_length:
        raise ConfigError(
            f"the collator cut the bench answers at max_length={max_length} (the longest sequence reached it). "
            "Raise sft.max_length / dpo.max_length or lower bench.answer_tokens."
        )


def sft_batch(cfg: ExperimentConfig, loaded: LoadedModel) -> tuple[dict[str, Any], SequenceShape]:
    """``bench.batch_size`` SFT sequences, each with its own random image."""
    b = cfg.bench
    prompt, answers = bench_texts(cfg, loaded, b.batch_size)
    images = [random_image(b.image_side, b.seed + i) for i in range(b.batch_size)]
    batch = ChatEncoder(loaded, cfg.sft.max_length).encode(images, [prompt] * b.batch_size, answers)
    batch["ids"] = [f"bench-{i}" for i in range(b.batch_size)]
    shape = sequence_shape(loaded, batch, len(images))
    _check_answers(cfg, shape, cfg.sft.max_length)
    return batch, shape


def pair_batch(cfg: ExperimentConfig, loaded: LoadedModel) -> tuple[dict[str, Any], SequenceShape]:
    """``bench.batch_size`` preference pairs with finite precomputed reference log-probs."""
    b = cfg.bench
    prompt, answers = bench_texts(cfg, loaded, 2 * b.batch_size)
    examples = [
        {"overlay": random_image(b.image_side, b.seed + i), "prompt": prompt, "accepted": answers[i],
         "rejected": answers[b.batch_size + i], "ref_logp_accepted": -1.0 * b.answer_tokens,
         "ref_logp_rejected": -1.1 * b.answer_tokens}
        for i in range(b.batch_size)
    ]
    batch = collate_pairs(ChatEncoder(loaded, cfg.dpo.max_length), examples)
    batch["ids"] = [f"bench-pair-{i}" for i in range(b.batch_size)]
    shape = sequence_shape(loaded, batch, len(examples))
    _check_answers(cfg, shape, cfg.dpo.max_length)
    return batch, shape


def generation_inputs(cfg: ExperimentConfig, loaded: LoadedModel, batch_size: int) -> tuple[list[Image.Image], list[str]]:
    """``batch_size`` (image, prompt) pairs of the bench shapes for ``generate``."""
    prompt, _ = bench_texts(cfg, loaded, 0)
    return [random_image(cfg.bench.image_side, cfg.bench.seed + i) for i in range(batch_size)], [prompt] * batch_size


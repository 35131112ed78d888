"""The offline tokenizer: a small byte-level BPE trained on the registry and prompt text.

It carries Qwen's special tokens, so the chat format and the image-token expansion work as
with the real tokenizer, and it needs no download. Training is deterministic: the same
registry and prompts give the same vocabulary.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from cme_vlm.schema import AnatomyConfig, PromptConfig

SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
QWEN_FIRST_SPECIAL_ID = 151643  # where Qwen2/2.5/3-VL put <|endoftext|>
PAD_TOKEN = "<|endoftext|>"
END_TOKEN = "<|im_end|>"

# Words every answer and prompt uses beside the registry's own text.
_EXTRA_TEXT = (
    "system user assistant You are a helpful assistant. The highlighted structure is the "
    "This is shown in green on the left-sided right-sided CME side phase during dissection. "
    "It matters because the surgeon should know that it lies near"
)


def corpus(anatomy: AnatomyConfig, prompts: PromptConfig) -> list[str]:
    """The text the offline BPE is trained on, in a fixed order."""
    lines = [anatomy.procedure, *anatomy.distractors, _EXTRA_TEXT, *prompts.templates]
    for key in sorted(anatomy.structures):
        spec = anatomy.structures[key]
        lines += [spec.display_name, *spec.synonyms, *(f.text for f in spec.facts)]
    return lines


def train_offline_tokenizer(
    anatomy: AnatomyConfig, prompts: PromptConfig, vocab_size: int, first_special_id: int = 0
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of at most ``vocab_size`` entries and add Qwen's special tokens.

    ``first_special_id`` 0 puts the special tokens right after the learned vocabulary (the
    ``tiny`` model); Qwen's real id 151643 pads the vocabulary with unused filler entries so the
    special tokens sit where a real Qwen checkpoint has them (the 7B architecture for benchmarks).
    """
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(corpus(anatomy, prompts), trainer=trainer)
    if first_special_id:
        bpe = _padded_to(bpe, first_special_id)
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=END_TOKEN, pad_token=PAD_TOKEN, padding_side="left"
    )


def _padded_to(bpe: Tokenizer, size: int) -> Tokenizer:
    """The same BPE with filler entries appended so that the next id is ``size``."""
    model = bpe.model
    vocab = bpe.get_vocab()
    if len(vocab) > size:
        raise ValueError(f"the learned vocabulary ({len(vocab)}) is larger than {size}")
    vocab.update({f"<|filler_{i}|>": i for i in range(len(vocab), size)})
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in _merges(model)]
    padded = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    padded.pre_tokenizer = bpe.pre_tokenizer
    return padded


def _merges(model: models.BPE) -> list:
    import json

    return json.loads(Tokenizer(model).to_str())["model"]["merges"]

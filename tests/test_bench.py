"""The benchmark's own numbers on ``tiny``: token counts, FLOP estimates, rates and the JSON/CLI output."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from cme_vlm.config import load_config

FAST = [
    "model=tiny", "bench.warmup_steps=1", "bench.max_new_tokens=5", "bench.generation_batch_sizes=[1,2]",
    "bench.generation_steps=1", "bench.prompt_tokens=17", "bench.answer_tokens=23",
    "sft.freezing.vision_encoder=freeze",  # SFT as in the paper: the frozen term of the formula is exercised
]
STEPS = 2


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory):
    from cme_vlm.bench import run_bench

    cfg = load_config(None, FAST)
    out = tmp_path_factory.mktemp("bench")
    report = run_bench(cfg, out, steps=STEPS)
    return cfg, out, report


def _rows(report: dict) -> dict[str, dict]:
    return {r["row"]: r for r in report["rows"]}


def _independent_counts(cfg) -> dict[str, int]:
    """Parameters per component straight from a built model's ``named_parameters``, head and embedding apart."""
    from cme_vlm.models.loading import load_model

    loaded = load_model(cfg)
    counts = {"vision_encoder": 0, "merger": 0, "language_model": 0}
    for name, p in loaded.model.named_parameters():
        counts[loaded.adapter.component_of(name)] += p.numel()
    text = loaded.model.config.text_config
    counts["head"] = counts["embedding"] = text.vocab_size * text.hidden_size
    counts["body"] = counts["language_model"] - counts["head"] - counts["embedding"]
    return counts


@pytest.mark.slow
def test_json_has_every_row_with_the_resolved_config(bench_run):
    cfg, out, report = bench_run
    saved = json.loads((out / "bench.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert set(_rows(saved)) == {"sft", "dpo", "generate bs=1", "generate bs=2", "explain bs=1 (greedy)"}
    assert all(r["status"] == "ok" for r in saved["rows"])
    from cme_vlm.config import load_saved_config

    saved_cfg = load_saved_config(out)
    assert (saved_cfg.bench.answer_tokens, saved_cfg.sft.freezing.vision_encoder.value) == (23, "freeze")


@pytest.mark.slow
def test_token_counts_are_what_the_collator_produced(bench_run):
    from cme_vlm.bench.inputs import bench_texts, sft_batch
    from cme_vlm.models.architecture import architecture_summary
    from cme_vlm.models.generation import prompt_texts
    from cme_vlm.models.loading import load_model

    cfg, _, report = bench_run
    loaded = load_model(cfg)
    batch, _ = sft_batch(cfg, loaded)
    prompt, answers = bench_texts(cfg, loaded, 3)
    tok = loaded.tokenizer
    assert len(tok(prompt, add_special_tokens=False)["input_ids"]) == 17
    assert all(len(tok(a, add_special_tokens=False)["input_ids"]) == 23 for a in answers)
    image_tokens = architecture_summary(cfg).image_tokens
    chat = len(tok(prompt_texts(loaded, [prompt])[0], add_special_tokens=False)["input_ids"])  # one image placeholder
    per_sequence = chat - 1 + image_tokens + 23 + 1  # + the answer's end token
    sft, dpo = _rows(report)["sft"], _rows(report)["dpo"]
    assert sft["shape"]["tokens"] == int(batch["attention_mask"].sum()) == 4 * per_sequence
    assert sft["shape"]["image_tokens"] == 4 * image_tokens and sft["shape"]["answer_tokens"] == 4 * 24
    assert dpo["shape"]["tokens"] == 8 * per_sequence and dpo["shape"]["sequences"] == 8
    assert dpo["shape"]["images_encoded"] == 4  # the shared image encoding of a pair
    assert sft["tokens_per_step"] == sft["shape"]["tokens"]


@pytest.mark.slow
def test_flops_follow_the_formula_on_independent_parameter_counts(bench_run):
    from cme_vlm.models.architecture import architecture_summary

    cfg, _, report = bench_run
    n = _independent_counts(cfg)
    summary = architecture_summary(cfg)  # the meta-device count, before the tokenizer sets the vocabulary
    assert {k: summary.params[k] for k in ("vision_encoder", "merger")} == {k: n[k] for k in ("vision_encoder", "merger")}
    assert summary.params["language_model"] - 2 * summary.vocab * summary.hidden == n["body"]
    sft, dpo = _rows(report)["sft"], _rows(report)["dpo"]
    image_tokens = 4 * summary.image_tokens  # one image per pair or sequence
    patches = 4 * image_tokens  # the 2x2 merge
    expected_sft = (2 * n["vision_encoder"] * patches + 6 * n["merger"] * image_tokens
                    + 6 * n["body"] * sft["shape"]["tokens"] + 6 * n["head"] * 4 * 24)
    expected_dpo = (6 * n["vision_encoder"] * patches + 6 * n["merger"] * image_tokens
                    + 6 * n["body"] * dpo["shape"]["tokens"] + 6 * n["head"] * 8 * 24)
    assert sft["flops_per_step"] == expected_sft
    assert dpo["flops_per_step"] == expected_dpo
    assert sft["params"]["vision_encoder"] == {"trainable": 0, "frozen": n["vision_encoder"]}
    assert dpo["params"]["vision_encoder"] == {"trainable": n["vision_encoder"], "frozen": 0}


@pytest.mark.slow
def test_rates_are_tokens_over_the_median_step(bench_run):
    cfg, _, report = bench_run
    for r in report["rows"]:
        assert len(r["step_times_s"]) == (STEPS if r["row"] in ("sft", "dpo") else 1)
        assert r["step_time_s"] == statistics.median(r["step_times_s"]) > 0
        assert r["tokens_per_s"] == pytest.approx(r["tokens_per_step"] / r["step_time_s"])
        if "flops_per_step" in r:
            assert r["flops_per_s"] == pytest.approx(r["flops_per_step"] / r["step_time_s"])
            assert r["mfu"] == pytest.approx(r["flops_per_s"] / 790e12)
        assert r["peak_memory_gib"] > 0
    assert _rows(report)["generate bs=2"]["tokens_per_step"] == 2 * 5


def test_generation_decodes_exactly_the_new_tokens(tiny_loaded):
    """The row's token count is true: each call prefills once, then runs one one-token step per new token."""
    import torch

    from cme_vlm.bench.generation_rows import generation_row

    cfg = load_config(None, FAST)
    widths = []
    hook = tiny_loaded.model.register_forward_hook(
        lambda m, args, kw, out: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    try:
        row = generation_row(cfg, tiny_loaded, 2, cfg.preference.sampling[0], torch.device("cpu"))
    finally:
        hook.remove()
    assert row["tokens_per_step"] == 2 * 5
    steps = cfg.bench.generation_steps
    calls = 1 + 2 * steps  # the warm-up, then the timed one-token and full calls
    assert sum(w > 1 for w in widths) == calls  # one prefill per call
    assert widths.count(1) == 5 + steps * (1 + 5)
    assert row["decode_step_s"] == pytest.approx((row["step_time_s"] - row["prefill_s"]) / 4)
    assert tiny_loaded.model.generation_config.min_new_tokens is None


def test_exact_text_lengths(tiny_loaded):
    from cme_vlm.bench.inputs import exact_text

    for n in (1, 2, 7, 40):
        text = exact_text(tiny_loaded.tokenizer, ["mesocolic", "plane", "vein"], n)
        assert len(tiny_loaded.tokenizer(text, add_special_tokens=False)["input_ids"]) == n


def test_bad_settings_are_refused():
    from cme_vlm.bench import run_bench
    from cme_vlm.errors import ConfigError

    cfg = load_config(None, ["model=tiny"])
    with pytest.raises(ConfigError, match="sft,dpo,generate"):
        run_bench(cfg, None, steps=1, only="sft,train")
    with pytest.raises(ConfigError, match="--steps=0"):
        run_bench(cfg, None, steps=0)


@pytest.mark.slow
def test_cli_writes_the_json(tmp_path: Path):
    from cme_vlm.cli import main

    rc = main(["bench", "--steps", "2", "--only", "sft", "--out", str(tmp_path), *FAST])
    assert rc == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [r["row"] for r in report["rows"]] == ["sft"] and report["steps"] == 2
    assert len(report["rows"][0]["step_times_s"]) == 2
    assert (tmp_path / "config.yaml").is_file()


def test_each_row_is_written_when_measured_and_a_failure_is_kept(tiny_loaded, tmp_path, monkeypatch):
    """A GPU run stopped by its time limit keeps what it measured: ``bench.json`` grows row by row, and a row that
    raises is kept with its error while the next rows still run; the command then fails naming it."""
    from cme_vlm.bench import rows, run
    from cme_vlm.errors import BenchError

    on_disk = []  # the rows bench.json held when each row started

    def written() -> list[str]:
        path = tmp_path / "bench.json"
        return [r["row"] for r in json.loads(path.read_text())["rows"]] if path.exists() else []

    def measured(name: str) -> dict:
        on_disk.append(written())
        return {"row": name, "status": "ok", "batch_size": 1, "step_time_s": 1.0, "tokens_per_s": 1.0,
                "peak_memory_gib": 0.0, "shape": {"prompt_tokens": 1, "new_tokens_per_sequence": 1}}

    def training_row(stage, *args):
        if stage == "sft":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return measured(stage)

    monkeypatch.setattr(run, "_load", lambda cfg, device: tiny_loaded)
    monkeypatch.setattr(rows, "training_row", training_row)
    monkeypatch.setattr(run, "generation_row", lambda cfg, loaded, n, sampling, device: measured(f"bs={n}"))
    with pytest.raises(BenchError, match="sft .RuntimeError: CUDA error"):
        run.run_bench(load_config(None, FAST), tmp_path, steps=1)
    assert on_disk == [["sft"], ["sft", "dpo"], ["sft", "dpo", "bs=1"], ["sft", "dpo", "bs=1", "bs=1"]]
    saved = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [r["row"] for r in saved] == ["sft", "dpo", "bs=1", "bs=1", "bs=2"]
    assert saved[0]["status"] == "failed" and "illegal memory access" in saved[0]["error"]

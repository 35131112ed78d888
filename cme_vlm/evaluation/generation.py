"""Deterministic answers of any number of models on the test split, cached per model and settings.

Each model's answers go to ``generations/<name>.jsonl``, one line per record, keyed by a
fingerprint of the model's weights (file names, sizes and modification times, and the
config.json content) and the generation settings, and by a hash of each record's prompt and
overlay. A re-run regenerates nothing that is up to date, and an interrupted run resumes.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset
from datasets import Image as ImageFeature
from PIL import Image

from cme_vlm import atomic
from cme_vlm.config import fingerprint
from cme_vlm.errors import DataError
from cme_vlm.schema import ExperimentConfig

GENERATIONS_DIRNAME = "generations"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class ModelSpec:
    """A model to evaluate: a label and its exported folder, or None for ``cfg.model`` (the base)."""

    name: str
    path: Path | None = None


def _file_signature(folder: Path) -> list[Any]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    signature: list[Any] = [[str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    config = folder / "config.json"
    if config.is_file():
        signature.append(hashlib.sha256(config.read_bytes()).hexdigest())
    return signature


def model_fingerprint(cfg: ExperimentConfig, spec: ModelSpec) -> str:
    """What identifies the answers a model gives: its weights, or the config and seed it is built from."""
    folder = spec.path or (Path(cfg.model.path).expanduser() if cfg.model.path else None)
    if folder is not None and folder.is_dir():
        weights: Any = _file_signature(folder)
    else:
        weights = {"model": fingerprint(cfg.model, cfg.anatomy, cfg.data.prompts), "seed": cfg.seed}
    # what is decoded, not how: batch size, KV cache and compilation (``generation``) change only the
    # floating-point order of the same greedy computation, so answers made either way stay valid
    settings = {"decoding": "greedy", "max_new_tokens": cfg.eval.max_new_tokens, "family": cfg.model.family.value}
    blob = json.dumps({"weights": weights, "settings": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def select_test_split(ds: Dataset, max_cases: int = 0) -> Dataset:
    """The answered test records, in a stable order; the first ``max_cases`` when that is positive."""
    test = ds.filter(lambda split, answer: split == "test" and bool(answer), input_columns=["split", "answer"])
    if len(test) == 0:
        raise DataError(
            "the dataset has no answered records in the test split. Build the data with data.test_fraction > 0 "
            "and run the teacher stage first."
        )
    test = test.sort("id")
    return test.select(range(min(max_cases, len(test)))) if max_cases > 0 else test


def _input_keys(test: Dataset) -> list[str]:
    """Per record: a hash of its prompt and overlay bytes, so a rebuilt dataset is never answered from stale lines."""
    raw = test.cast_column("overlay", ImageFeature(decode=False))
    return [
        hashlib.sha256(prompt.encode() + (overlay["bytes"] or b"")).hexdigest()[:16]
        for prompt, overlay in zip(raw["prompt"], raw["overlay"], strict=True)
    ]


def _cached(path: Path, fp: str) -> dict[str, dict[str, Any]]:
    """Lines of ``path`` made with fingerprint ``fp``; a file of another fingerprint is replaced."""
    rows = atomic.read_jsonl(path)
    valid = {r["id"]: r for r in rows if r.get("fingerprint") == fp}
    if len(valid) != len(rows):
        atomic.write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in valid.values()))
    return valid


def _batches(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def generate_answers(cfg: ExperimentConfig, spec: ModelSpec, test: Dataset, folder: str | Path) -> list[str]:
    """Greedy answers of ``spec`` for every record of ``test``, in order, from the cache where possible."""
    path = Path(folder) / GENERATIONS_DIRNAME / f"{spec.name}.jsonl"
    fp = model_fingerprint(cfg, spec)
    cached = _cached(path, fp)
    keys = _input_keys(test)
    ids = test["id"]
    todo = [i for i, (rid, key) in enumerate(zip(ids, keys, strict=True)) if cached.get(rid, {}).get("input") != key]
    if todo:
        from cme_vlm.models.generation import generate, length_order
        from cme_vlm.models.placement import load_for_inference

        # a copy: transformers fills defaults into nested architecture dicts in place, which would move the fingerprint
        loaded = load_for_inference(copy.deepcopy(cfg), spec.path)
        prompts = test["prompt"]
        todo = [todo[j] for j in length_order(loaded, [prompts[i] for i in todo])]  # batches of similar length
        for batch in _batches(todo, cfg.eval.batch_size):
            rows = test.select(batch)
            images = [_rgb(img) for img in rows["overlay"]]
            answers = generate(loaded, images, rows["prompt"], cfg.eval.max_new_tokens, cfg.eval.batch_size,
                               cfg.generation)
            for i, answer in zip(batch, answers, strict=True):
                line = {"id": ids[i], "input": keys[i], "fingerprint": fp, "model": spec.name, "answer": answer}
                atomic.append_jsonl(path, line)  # one line per answer: a crash loses at most a batch
                cached[ids[i]] = line
        del loaded
        gc.collect()
    return [cached[rid]["answer"] for rid in ids]


def _rgb(image: Image.Image | bytes) -> Image.Image:
    img = Image.open(io.BytesIO(image)) if isinstance(image, bytes) else image
    return img.convert("RGB")

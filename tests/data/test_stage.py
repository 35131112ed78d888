from __future__ import annotations

import base64
import csv
import json
import re
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from cme_vlm.cli import main
from cme_vlm.config import load_saved_config
from cme_vlm.data import stage
from cme_vlm.data.frames import read_frame
from cme_vlm.data.overlay import resize_pair
from cme_vlm.data.records import RECORD_FEATURES, export_dataset, load_dataset, raw_images, save_dataset
from cme_vlm.data.stage import INVALID_FILE, build
from cme_vlm.errors import DataError
from cme_vlm.schema import DataSource, OnInvalid

from .dsad_tree import STRUCTURES, write_dsad_layout


def test_built_dataset_records(built_dataset: Path):
    ds = load_dataset(built_dataset)
    assert ds.features == RECORD_FEATURES
    manifest = [json.loads(line) for line in (built_dataset.parent / "00-frames" / "manifest.jsonl").read_text().splitlines()]
    assert len(ds) == sum(len(row["masks"]) for row in manifest)
    assert len(set(ds["id"])) == len(ds)
    assert set(ds["answer"]) == {""} and set(ds["provenance"]) == {""}
    by_split: dict[str, set[str]] = {}
    for procedure, split in zip(ds["procedure"], ds["split"], strict=True):
        by_split.setdefault(split, set()).add(procedure)
    assert set(by_split) == {"train", "val", "test"}
    assert sum(len(p) for p in by_split.values()) == len(set(ds["procedure"]))  # no procedure in two splits
    assert load_saved_config(built_dataset).data.image_size == 224


def test_overlay_matches_frame_and_mask(built_dataset: Path):
    ds = load_dataset(built_dataset)
    frames_root = built_dataset.parent / "00-frames"
    for record in ds.select(range(3)):
        overlay, mask = np.asarray(record["overlay"]), np.asarray(record["mask"])
        assert overlay.shape == (224, 224, 3) and record["mask"].mode == "L"
        assert set(np.unique(mask)) == {0, 255}
        frame = read_frame(frames_root / record["frame"])
        plain, _ = resize_pair(frame, np.ones(frame.shape[:2], bool), 224)
        np.testing.assert_array_equal(np.any(overlay != plain, axis=-1), mask == 255)


def test_save_load_and_export_bit_for_bit(built_dataset: Path, tmp_path: Path):
    ds = load_dataset(built_dataset)
    save_dataset(ds, tmp_path / "copy")
    original, copy = raw_images(ds).to_list(), raw_images(load_dataset(tmp_path / "copy")).to_list()
    assert original == copy
    export_dataset(ds, tmp_path / "records.parquet")
    parquet = datasets.Dataset.from_parquet(str(tmp_path / "records.parquet"), cache_dir=str(tmp_path / "cache"))
    assert raw_images(parquet).to_list() == original
    export_dataset(ds, tmp_path / "records.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == ds["id"]
    assert [base64.b64decode(line["overlay"]) for line in lines] == [r["overlay"]["bytes"] for r in original]
    with pytest.raises(DataError, match="must end in .parquet or .jsonl"):
        export_dataset(ds, tmp_path / "records.csv")


def test_build_is_deterministic(cfg, built_dataset: Path, tmp_path: Path):
    build(cfg, built_dataset.parent / "00-frames", tmp_path / "again")
    assert raw_images(load_dataset(tmp_path / "again")).to_list() == raw_images(load_dataset(built_dataset)).to_list()


def _manifest_cfg(cfg, root: Path):
    cfg.data.source = DataSource.manifest
    cfg.data.root = str(root)
    cfg.data.manifest = str(root / "manifest.jsonl")
    cfg.data.image_size = 32
    return cfg


def test_manifest_build(trees, cfg, tmp_path: Path):
    trees.manifest(tmp_path / "src")
    build(_manifest_cfg(cfg, tmp_path / "src"), tmp_path / "unused", tmp_path / "out")
    ds = load_dataset(tmp_path / "out")
    assert len(ds) == 9 and set(ds["structure"]) == {"pancreas", "inferior_mesenteric_vein"}
    assert ds[0]["overlay"].size == (32, 32)


def _replace_mask(root: Path, array: np.ndarray, mode: str | None = None) -> None:
    Image.fromarray(array, mode=mode).save(root / "msk/p1/f1_pancreas.png")


def _edit_manifest(root: Path, change: Callable[[dict], None]) -> None:
    manifest = root / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    change(rows[-1])
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))


BAD_INPUTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing image": (lambda r: (r / "img/p2/f1.png").unlink(), r"img/p2/f1.png' does not exist"),
    "truncated image": (
        lambda r: (r / "img/p2/f1.png").write_bytes((r / "img/p2/f1.png").read_bytes()[:60]),
        r"img/p2/f1.png' cannot be read",
    ),
    "mask size": (lambda r: _replace_mask(r, np.full((17, 20), 255, np.uint8)), r"f1_pancreas.png' is 20x17 but its frame is 20x16"),
    "non-binary mask": (lambda r: _replace_mask(r, np.full((16, 20), 128, np.uint8)), r"f1_pancreas.png' is not binary"),
    "16-bit grey levels": (lambda r: _replace_mask(r, np.arange(320, dtype=np.uint16).reshape(16, 20)), r"f1_pancreas.png' is not binary"),
    "RGBA mask": (lambda r: _replace_mask(r, np.full((16, 20, 4), 255, np.uint8), "RGBA"), r"f1_pancreas.png' has image mode RGBA"),
    "empty mask": (lambda r: _replace_mask(r, np.zeros((16, 20), np.uint8)), r"f1_pancreas.png' is empty"),
    "unknown structure": (
        lambda r: _edit_manifest(r, lambda row: row["masks"].update(spleen="msk/p2/f1_pancreas.png")),
        r"manifest.jsonl' line 6: unknown structure 'spleen'",
    ),
    "duplicate record": (
        lambda r: (r / "manifest.jsonl").write_text((r / "manifest.jsonl").read_text() + (r / "manifest.jsonl").read_text().splitlines()[0] + "\n"),
        r"manifest.jsonl' line 7: duplicate record, frame 'img/p0/f0.png'",
    ),
    "missing column": (lambda r: _edit_manifest(r, lambda row: row.pop("phase")), r"manifest.jsonl' line 6 lacks column\(s\) phase"),
}


def _listed(out: Path) -> list[dict[str, str]]:
    with open(out / INVALID_FILE, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_named_and_only_the_list_is_written(trees, cfg, tmp_path: Path, case: str):
    trees.manifest(tmp_path / "src")
    spoil, match = BAD_INPUTS[case]
    spoil(tmp_path / "src")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=match):
        build(_manifest_cfg(cfg, tmp_path / "src"), tmp_path / "src", out)
    assert [p.name for p in out.iterdir()] == [INVALID_FILE]
    assert any(re.search(match, row["message"]) for row in _listed(out))


def _three_bad_files(root: Path) -> list[str]:
    """Spoil a frame, a mask and a manifest row; the names each problem must carry."""
    (root / "img/p0/f1.png").write_bytes(b"not a png")
    _replace_mask(root, np.full((16, 20), 128, np.uint8))
    _edit_manifest(root, lambda row: row.update(side="middle"))
    return ["img/p0/f1.png", "f1_pancreas.png", "side 'middle'"]


def test_every_problem_is_reported_in_one_run(trees, cfg, tmp_path: Path, capsys, monkeypatch):
    trees.manifest(tmp_path / "src")
    names = _three_bad_files(tmp_path / "src")
    monkeypatch.setattr(stage.console, "width", 10_000)  # one problem, one line: no wrapping inside paths
    with pytest.raises(DataError, match=rf"3 problem\(s\).*listed in '.*{INVALID_FILE}'.*data\.on_invalid=skip"):
        build(_manifest_cfg(cfg, tmp_path / "src"), tmp_path / "src", tmp_path / "out")
    screen = capsys.readouterr().err
    listed = _listed(tmp_path / "out")
    assert len(listed) == 3 and {row["checked"] for row in listed} == {"manifest row", "frame", "mask"}
    for name in names:
        assert name in screen, f"{name} not on screen:\n{screen}"
        assert any(name in row["message"] for row in listed), f"{name} not in the list: {listed}"


def test_skip_builds_from_the_valid_rows_and_lists_the_rest(trees, cfg, tmp_path: Path):
    trees.manifest(tmp_path / "src")
    _three_bad_files(tmp_path / "src")
    cfg = _manifest_cfg(cfg, tmp_path / "src")
    cfg.data.on_invalid = OnInvalid.skip
    build(cfg, tmp_path / "src", tmp_path / "out")
    ds = load_dataset(tmp_path / "out")
    # 9 records before: p0/f1 (pancreas), p1/f1 (pancreas mask) and p2/f1 (pancreas row) are left out
    assert len(ds) == 6
    assert not {"img/p0/f1.png", "img/p1/f1.png", "img/p2/f1.png"} & set(ds["frame"])
    assert len(_listed(tmp_path / "out")) == 3
    assert load_saved_config(tmp_path / "out").data.on_invalid is OnInvalid.skip


def test_a_clean_build_removes_an_earlier_list(trees, cfg, tmp_path: Path):
    trees.manifest(tmp_path / "src")
    cfg = _manifest_cfg(cfg, tmp_path / "src")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / INVALID_FILE).write_text("checked,where,message\nframe,x,fixed since\n")
    build(cfg, tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out" / INVALID_FILE).exists()


def test_nothing_valid_left_stops_even_with_skip(trees, cfg, tmp_path: Path):
    trees.manifest(tmp_path / "src", n_procedures=1, frames_per=1)
    (tmp_path / "src/img/p0/f0.png").unlink()
    cfg = _manifest_cfg(cfg, tmp_path / "src")
    cfg.data.on_invalid = OnInvalid.skip
    with pytest.raises(DataError, match="No valid frame is left"):
        build(cfg, tmp_path / "src", tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == [INVALID_FILE]


def test_dsad_build(trees, cfg, tmp_path: Path):
    trees.dsad(tmp_path / "dsad")
    cfg.data.source = DataSource.dsad
    cfg.data.image_size = 32
    build(cfg, tmp_path / "dsad", tmp_path / "out")
    ds = load_dataset(tmp_path / "out")
    assert len(ds) == 7  # 5 from the structure folders, 2 from the new multilabel frame (its empty mask makes none)
    assert set(ds["procedure"]) == {"dsad_01", "dsad_03"} and set(ds["side"]) == {"left"}
    assert sorted(r["structure"] for r in ds if r["frame"].startswith("multilabel/")) == ["inferior_mesenteric_vein",
                                                                                          "pancreas"]


@pytest.mark.slow
def test_dsad_experiment_builds_every_structure_and_names_the_rectal_resection(tmp_path: Path):
    counts = write_dsad_layout(tmp_path / "dsad", frames=88, surgeries=6)
    experiment = Path(__file__).resolve().parents[2] / "experiments" / "dsad.yaml"
    args = ["data", "build", "--config", str(experiment), f"data.root={tmp_path / 'dsad'}", "data.image_size=32",
            "--out", str(tmp_path / "out")]
    assert main(args) == 0
    ds = load_dataset(tmp_path / "out")
    assert len(ds) == counts.records and sorted(set(ds["structure"])) == sorted(STRUCTURES)
    assert any(r["frame"].startswith("multilabel/") for r in ds)
    by_split = {split: {p for p, s in zip(ds["procedure"], ds["split"], strict=True) if s == split}
                for split in ("train", "val", "test")}
    assert all(by_split.values()) and not set.intersection(*by_split.values())  # no surgery in two splits
    assert all(p.endswith("\nContext: robot-assisted rectal resection.") for p in ds["prompt"]), ds["prompt"][0]
    assert not any("CME" in p or "Mesocolic" in p or "mesocolic" in p for p in ds["prompt"])


def test_missing_synthetic_tree_says_what_to_run(cfg, tmp_path: Path):
    with pytest.raises(DataError, match="cme-vlm data synth"):
        build(cfg, tmp_path / "nothing", tmp_path / "out")


@pytest.mark.slow
def test_cli_synth_then_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    small = ["data.synthetic.n_procedures=4", "--data.image_size=64"]
    assert main(["data", "synth", "--n", "12", "--out", "frames", *small]) == 0
    assert len(list((tmp_path / "frames" / "frames").rglob("*.png"))) == 12
    assert main(["data", "build", "--frames", "frames", "--out", "data", *small]) == 0
    ds = load_dataset(tmp_path / "data")
    assert len(set(ds["frame"])) == 12 and ds[0]["overlay"].size == (64, 64)
    assert load_saved_config(tmp_path / "data").data.image_size == 64
    next((tmp_path / "frames" / "frames").rglob("*.png")).unlink()
    assert main(["data", "build", "--frames", "frames", "--out", "data2"]) == 2
    assert [p.name for p in (tmp_path / "data2").iterdir()] == [INVALID_FILE]


def test_reading_a_dataset_never_writes_into_its_folder(built_dataset: Path):
    from cme_vlm.data.records import DATASET_DIRNAME, load_dataset

    folder = built_dataset / DATASET_DIRNAME
    before = sorted(p.name for p in folder.iterdir())
    ds = load_dataset(built_dataset)
    ds.filter(lambda split: split == "test", input_columns=["split"]).sort("id")
    assert sorted(p.name for p in folder.iterdir()) == before

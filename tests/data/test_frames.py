from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cme_vlm.anatomy import Anatomy
from cme_vlm.data.frames import load_dsad, load_manifest, read_frame, read_mask, split_by_procedure
from cme_vlm.errors import DataError


@pytest.fixture
def anatomy(cfg) -> Anatomy:
    return Anatomy(cfg.anatomy)


def test_jsonl_manifest_loads_with_synonyms(trees, tmp_path: Path, anatomy: Anatomy):
    samples = load_manifest(trees.manifest(tmp_path), tmp_path, anatomy)
    assert len(samples) == 6
    first = samples[0]
    assert first.name == "img/p0/f0.png" and first.frame == tmp_path / "img/p0/f0.png"
    assert set(first.masks) == {"pancreas", "inferior_mesenteric_vein"}
    assert first.side == "left" and first.procedure == "P0" and first.phase == "vascular ligation"


def test_csv_manifest_with_mask_columns(trees, tmp_path: Path, anatomy: Anatomy):
    trees.manifest(tmp_path, 1, 1)
    csv = tmp_path / "manifest.csv"
    csv.write_text("frame,procedure,side,phase,mask_pancreas,mask_duodenum\nimg/p0/f0.png,P0,right,x,msk/p0/f0_pancreas.png,\n")
    (sample,) = load_manifest(csv, tmp_path, anatomy)
    assert sample.masks == {"pancreas": tmp_path / "msk/p0/f0_pancreas.png"} and sample.side == "right"


def test_csv_manifest_with_json_masks_and_merged_rows(trees, tmp_path: Path, anatomy: Anatomy):
    trees.manifest(tmp_path, 1, 1)
    csv = tmp_path / "manifest.csv"
    csv.write_text(
        'frame,masks,procedure,side,phase\n'
        'img/p0/f0.png,"{""pancreas"": ""msk/p0/f0_pancreas.png""}",P0,left,x\n'
        'img/p0/f0.png,"{""IMV"": ""msk/p0/f0_imv.png""}",P0,left,x\n'
    )
    (sample,) = load_manifest(csv, tmp_path, anatomy)
    assert set(sample.masks) == {"pancreas", "inferior_mesenteric_vein"}


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("frame,procedure,side,phase\na.png,P,left,x\n", "manifest.csv' lacks column.*masks"),
        ("frame,masks,procedure,side,phase\na.png,{},P,left,x\n", "line 2: no masks"),
        ("frame,masks,procedure,side,phase\na.png,{oops,P,left,x\n", "line 2: column 'masks' is not a JSON object"),
        ("frame,masks,side,phase\na.png,{},left,x\n", "manifest.csv' lacks column.*procedure"),
        ('frame,masks,procedure,side,phase\na.png,"{""ureter"": ""m.png""}",P,left,x\n', "line 2: unknown structure 'ureter'"),
        ('frame,masks,procedure,side,phase\na.png,"{""pancreas"": ""m.png""}",P,both,x\n', "line 2: side 'both'"),
        ('frame,masks,procedure,side,phase\na.png,"{""pancreas"": ""m.png""}",P,left,x\n'
         'a.png,"{""pancreatic tissue"": ""n.png""}",P,left,x\n', "line 3: duplicate record.*pancreas"),
        ('frame,masks,procedure,side,phase\na.png,"{""pancreas"": ""m.png""}",P,left,x\n'
         'a.png,"{""IMV"": ""n.png""}",P,right,x\n', "line 3: frame 'a.png' is listed before"),
    ],
)
def test_manifest_problems_name_the_line(tmp_path: Path, anatomy: Anatomy, body: str, match: str):
    csv = tmp_path / "manifest.csv"
    csv.write_text(body)
    with pytest.raises(DataError, match=match):
        load_manifest(csv, tmp_path, anatomy)


def test_read_frame_and_mask_problems(trees, tmp_path: Path):
    trees.frame(tmp_path / "f.png")
    with pytest.raises(DataError, match="'.*missing.png' does not exist"):
        read_frame(tmp_path / "missing.png")
    data = (tmp_path / "f.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.png' cannot be read"):
        read_frame(tmp_path / "cut.png")
    (tmp_path / "text.png").write_text("not a png")
    with pytest.raises(DataError, match="text.png' cannot be read"):
        read_mask(tmp_path / "text.png")
    Image.fromarray(np.full((16, 20), 300, np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(DataError, match="deep.png' is I;16.*8-bit"):
        read_mask(tmp_path / "deep.png")
    Image.fromarray(np.zeros((16, 20, 4), np.uint8), mode="RGBA").save(tmp_path / "rgba.png")
    with pytest.raises(DataError, match="rgba.png' has image mode RGBA"):
        read_mask(tmp_path / "rgba.png")
    Image.fromarray(np.tile(np.arange(20, dtype=np.uint8), (16, 1)), mode="L").save(tmp_path / "grey.png")
    with pytest.raises(DataError, match="grey.png' is not binary"):
        read_mask(tmp_path / "grey.png")
    trees.mask(tmp_path / "empty.png", box=(0, 0, 0, 0))
    with pytest.raises(DataError, match="empty.png' is empty"):
        read_mask(tmp_path / "empty.png")
    trees.mask(tmp_path / "big.png", size=(21, 16))
    with pytest.raises(DataError, match="big.png' is 21x16 but its frame is 20x16"):
        read_mask(tmp_path / "big.png", read_frame(tmp_path / "f.png").shape)
    trees.mask(tmp_path / "ok.png")
    assert read_mask(tmp_path / "ok.png", (16, 20, 3)).sum() == 49


def test_dsad_layout(trees, tmp_path: Path, anatomy: Anatomy, caplog: pytest.LogCaptureFixture):
    trees.dsad(tmp_path)
    with caplog.at_level(logging.WARNING):
        samples = load_dsad(tmp_path, anatomy, "left", "mesocolic dissection")
    assert "colon" in caplog.text and caplog.text.count("skipped") == 1
    assert len(samples) == 4
    assert {s.procedure for s in samples} == {"dsad_01", "dsad_03"}
    shared = [s for s in samples if len(s.masks) == 2]
    assert len(shared) == 1
    assert shared[0].masks["inferior_mesenteric_vein"].name == "mask07.png"
    assert shared[0].masks["pancreas"].name == "mask01.png"
    assert all(s.side == "left" and s.phase == "mesocolic dissection" for s in samples)


def test_dsad_problems(trees, tmp_path: Path, anatomy: Anatomy):
    with pytest.raises(DataError, match="not a folder"):
        load_dsad(tmp_path / "nowhere", anatomy, "left", "x")
    trees.mask(tmp_path / "pancreas" / "01" / "mask04.png")
    with pytest.raises(DataError, match="mask04.png' has no frame 'image04.png'"):
        load_dsad(tmp_path, anatomy, "left", "x")


def test_split_by_procedure():
    procedures = [f"P{i}" for i in range(20)] * 3
    splits = split_by_procedure(procedures, 0.15, 0.2, seed=0)
    assert set(splits) == set(procedures)
    counts = {s: list(splits.values()).count(s) for s in ("train", "val", "test")}
    assert counts == {"train": 13, "val": 3, "test": 4}
    assert split_by_procedure(procedures, 0.15, 0.2, seed=0) == splits
    assert split_by_procedure(procedures, 0.15, 0.2, seed=1) != splits
    three = split_by_procedure(["a", "b", "c"], 0.1, 0.1, seed=0)
    assert sorted(three.values()) == ["test", "train", "val"]
    assert set(split_by_procedure(["a", "b"], 0.3, 0.3, seed=0).values()) >= {"train"}
    assert split_by_procedure(["a"], 0.5, 0.4, seed=0) == {"a": "train"}
    assert set(split_by_procedure(list("abcd"), 0.0, 0.5, seed=0).values()) == {"train", "test"}

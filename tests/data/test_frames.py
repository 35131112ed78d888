from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cme_vlm.anatomy import Anatomy
from cme_vlm.data.frames import load_manifest, read_frame, read_mask, split_by_procedure
from cme_vlm.data.validation import Problems
from cme_vlm.errors import DataError


@pytest.fixture
def anatomy(cfg) -> Anatomy:
    return Anatomy(cfg.anatomy)


def test_jsonl_manifest_loads_with_synonyms(trees, tmp_path: Path, anatomy: Anatomy):
    problems = Problems()
    samples = load_manifest(trees.manifest(tmp_path), tmp_path, anatomy, problems)
    assert not problems.found
    assert len(samples) == 6
    first = samples[0]
    assert first.name == "img/p0/f0.png" and first.frame == tmp_path / "img/p0/f0.png"
    assert set(first.masks) == {"pancreas", "inferior_mesenteric_vein"}
    assert first.side == "left" and first.procedure == "P0" and first.phase == "vascular ligation"


def test_csv_manifest_with_mask_columns(trees, tmp_path: Path, anatomy: Anatomy):
    trees.manifest(tmp_path, 1, 1)
    csv = tmp_path / "manifest.csv"
    csv.write_text("frame,procedure,side,phase,mask_pancreas,mask_duodenum\nimg/p0/f0.png,P0,right,x,msk/p0/f0_pancreas.png,\n")
    (sample,) = load_manifest(csv, tmp_path, anatomy, Problems())
    assert sample.masks == {"pancreas": tmp_path / "msk/p0/f0_pancreas.png"} and sample.side == "right"


def test_csv_manifest_with_json_masks_and_merged_rows(trees, tmp_path: Path, anatomy: Anatomy):
    trees.manifest(tmp_path, 1, 1)
    csv = tmp_path / "manifest.csv"
    csv.write_text(
        'frame,masks,procedure,side,phase\n'
        'img/p0/f0.png,"{""pancreas"": ""msk/p0/f0_pancreas.png""}",P0,left,x\n'
        'img/p0/f0.png,"{""IMV"": ""msk/p0/f0_imv.png""}",P0,left,x\n'
    )
    (sample,) = load_manifest(csv, tmp_path, anatomy, Problems())
    assert set(sample.masks) == {"pancreas", "inferior_mesenteric_vein"}


def test_csv_manifest_with_byte_order_mark(trees, tmp_path: Path, anatomy: Anatomy):
    trees.manifest(tmp_path, 1, 1)
    csv = tmp_path / "manifest.csv"
    # what a spreadsheet's "CSV UTF-8" writes: a byte-order mark before the header, CRLF line ends
    text = "frame,procedure,side,phase,mask_pancreas\r\nimg/p0/f0.png,P0,left,x,msk/p0/f0_pancreas.png\r\n"
    csv.write_bytes(text.encode("utf-8-sig"))
    problems = Problems()
    (sample,) = load_manifest(csv, tmp_path, anatomy, problems)
    assert sample.name == "img/p0/f0.png" and set(sample.masks) == {"pancreas"} and not problems.found


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("frame,procedure,side,phase\na.png,P,left,x\n", "manifest.csv' lacks column.*masks"),
        ("frame,masks,side,phase\na.png,{},left,x\n", "manifest.csv' lacks column.*procedure"),
        ("frame,masks,procedure,side,phase\n", "manifest.csv' lists no frames"),
    ],
)
def test_unreadable_manifest_stops_at_once(tmp_path: Path, anatomy: Anatomy, body: str, match: str):
    csv = tmp_path / "manifest.csv"
    csv.write_text(body)
    with pytest.raises(DataError, match=match):
        load_manifest(csv, tmp_path, anatomy, Problems())


def test_non_utf8_manifest_says_how_to_save_it(tmp_path: Path, anatomy: Anatomy):
    (tmp_path / "manifest.csv").write_bytes("frame,masks,procedure,side,phase\nä.png,{},P,left,x\n".encode("cp1252"))
    with pytest.raises(DataError, match="manifest.csv' is not UTF-8.*CSV UTF-8"):
        load_manifest(tmp_path / "manifest.csv", tmp_path, anatomy, Problems())


HEADER = "frame,masks,procedure,side,phase\n"
PANCREAS = 'a.png,"{""pancreas"": ""m.png""}",P,left,x\n'


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ("a.png,{},P,left,x\n", "line 2: no masks"),
        ("a.png,{oops,P,left,x\n", "line 2: column 'masks' is not a JSON object"),
        ('a.png,"{""pancreas"": ""m.png""}",,left,x\n', "line 2 lacks column.*procedure"),
        ('a.png,"{""pancreas"": ""m.png""}",P,left,x,extra\n', "line 2 has more cells than the header"),
        ('a.png,"{""ureter"": ""m.png""}",P,left,x\n', "line 2: unknown structure 'ureter'"),
        ('a.png,"{""pancreas"": ""m.png""}",P,both,x\n', "line 2: side 'both'"),
        (PANCREAS + 'a.png,"{""pancreatic tissue"": ""n.png""}",P,left,x\n', "line 3: duplicate record.*pancreas"),
        (PANCREAS + 'a.png,"{""IMV"": ""n.png""}",P,right,x\n', "line 3: frame 'a.png' is listed before"),
    ],
)
def test_wrong_rows_are_recorded_and_left_out(tmp_path: Path, anatomy: Anatomy, rows: str, match: str):
    csv = tmp_path / "manifest.csv"
    csv.write_text(HEADER + rows + 'b.png,"{""IMV"": ""i.png""}",Q,right,y\n')
    problems = Problems()
    samples = load_manifest(csv, tmp_path, anatomy, problems)
    (problem,) = problems.found
    assert problem.checked == "manifest row" and re.search(match, problem.message), problem
    assert "b.png" in {s.name for s in samples}  # the valid row after the wrong one is still read
    assert all(s.masks for s in samples)


def test_only_the_wrong_structure_of_a_row_is_left_out(tmp_path: Path, anatomy: Anatomy):
    csv = tmp_path / "manifest.csv"
    csv.write_text(HEADER + 'a.png,"{""spleen"": ""s.png"", ""pancreas"": ""m.png""}",P,left,x\n')
    problems = Problems()
    (sample,) = load_manifest(csv, tmp_path, anatomy, problems)
    assert set(sample.masks) == {"pancreas"} and "'spleen'" in problems.found[0].message


def test_every_wrong_jsonl_line_is_recorded(trees, tmp_path: Path, anatomy: Anatomy):
    manifest = trees.manifest(tmp_path)
    lines = manifest.read_text().splitlines()
    lines[1], lines[3] = lines[1][:-4], "[1, 2]"
    manifest.write_text("\n".join(lines) + "\n")
    problems = Problems()
    samples = load_manifest(manifest, tmp_path, anatomy, problems)
    assert [p.where.rsplit(" ", 1)[1] for p in problems.found] == ["2", "4"]
    assert "not valid JSON" in problems.found[0].message and "not a JSON object" in problems.found[1].message
    assert len(samples) == 4


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
    Image.fromarray(np.tile(np.array([0, 300, 65535], np.uint16), (16, 7))[:, :20]).save(tmp_path / "deep.png")
    with pytest.raises(DataError, match=r"deep.png' is not binary: it holds 3 value\(s\) \(0, 300, 65535\)"):
        read_mask(tmp_path / "deep.png")
    Image.fromarray(np.full((16, 20), 255, np.uint8), mode="L").save(tmp_path / "full.png")
    with pytest.raises(DataError, match=r"full.png' is not binary: it holds 1 value\(s\) \(255\)"):
        read_mask(tmp_path / "full.png")
    Image.fromarray(np.zeros((16, 20, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="rgb.png' has image mode RGB"):
        read_mask(tmp_path / "rgb.png")
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


def _box(dtype: type, value: int) -> np.ndarray:
    array = np.zeros((16, 20), dtype)
    array[2:9, 2:9] = value
    return array


@pytest.mark.parametrize(
    ("image", "suffix"),
    [
        (Image.fromarray(_box(np.uint8, 255), mode="L"), "png"),
        (Image.fromarray(_box(np.uint8, 1), mode="L"), "png"),
        (Image.fromarray(_box(bool, True)), "png"),  # mode "1"
        (Image.fromarray(_box(np.uint16, 65535)), "png"),  # read back as I;16
        (Image.fromarray(_box(np.int32, 1)), "tif"),  # mode "I": PNG cannot hold it
    ],
    ids=["0-255", "0-1", "mode-1", "16-bit", "32-bit"],
)
def test_every_two_valued_single_channel_mask_is_read(tmp_path: Path, image: Image.Image, suffix: str):
    image.save(tmp_path / f"mask.{suffix}")
    mask = read_mask(tmp_path / f"mask.{suffix}", (16, 20, 3))
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, _box(bool, True))


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

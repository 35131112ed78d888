"""The DSAD loader: every frame of the structure folders and the multilabel set, one sample per distinct frame."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from cme_vlm.anatomy import Anatomy
from cme_vlm.config import load_config
from cme_vlm.data.dsad import load_dsad
from cme_vlm.data.frames import split_by_procedure
from cme_vlm.data.validation import Problems
from cme_vlm.errors import DataError

from .dsad_tree import STRUCTURES, write_dsad_layout


@pytest.fixture
def anatomy(cfg) -> Anatomy:
    return Anatomy(cfg.anatomy)


def test_structure_folders_and_multilabel_frames(trees, tmp_path: Path, anatomy: Anatomy,
                                                 caplog: pytest.LogCaptureFixture):
    trees.dsad(tmp_path)
    problems = Problems()
    with caplog.at_level(logging.INFO):
        samples = load_dsad(tmp_path, anatomy, "left", "", problems)
    assert not problems.found
    assert caplog.text.count("skipped") == 1
    assert "anno_1 (per-annotator masks" in caplog.text
    assert "colon, multilabel *_colon.png (no structure in the registry; add it" in caplog.text
    assert "1 DSAD multilabel mask(s) repeat" in caplog.text
    assert {s.procedure for s in samples} == {"dsad_01", "dsad_03"}
    by_name = {s.name: s for s in samples}
    assert len(samples) == 5  # 4 pancreas frames (one shared with the veins) and the new multilabel frame
    shared = by_name["intestinal_veins/01/image07.png"]  # first seen there: folders are read in name order
    assert shared.masks["inferior_mesenteric_vein"].name == "mask07.png" and shared.masks["pancreas"].name == "mask01.png"
    repeated = by_name["pancreas/01/image00.png"]
    assert repeated.masks["pancreas"].name == "mask00.png" and not repeated.optional  # the structure folder's mask wins
    multi = by_name["multilabel/03/image00.png"]
    assert {k: m.name for k, m in multi.masks.items()} == {
        "pancreas": "mask00_pancreas.png", "inferior_mesenteric_vein": "mask00_intestinal_veins.png",
        "duodenum": "mask00_duodenum.png"}
    assert multi.optional == {"pancreas", "inferior_mesenteric_vein", "duodenum"}  # the build drops the empty one
    assert all(s.side == "left" and s.phase == "" for s in samples)


def test_wrong_files_are_problems_and_the_rest_still_loads(trees, tmp_path: Path, anatomy: Anatomy):
    with pytest.raises(DataError, match="not a folder"):
        load_dsad(tmp_path / "nowhere", anatomy, "left", "x", Problems())
    trees.dsad(tmp_path)
    trees.mask(tmp_path / "pancreas" / "01" / "mask04.png")
    trees.frame(tmp_path / "pancreas" / "03" / "image05.png")
    trees.frame(tmp_path / "pancreas" / "03" / "image06.png", value=10 * 1 + 3)  # the pixels of image01.png
    trees.mask(tmp_path / "pancreas" / "03" / "mask06.png")
    multi = tmp_path / "multilabel" / "03"
    trees.mask(multi / "mask00.png")  # no structure in the name
    trees.mask(multi / "mask09_pancreas.png")  # no image09.png
    trees.frame(multi / "image02.png", value=200)  # no mask at all
    problems = Problems()
    samples = load_dsad(tmp_path, anatomy, "left", "x", problems)
    messages = [p.message for p in problems.found]
    assert len(messages) == 6, messages
    assert re.search("mask04.png' has no frame 'image04.png'", messages[0])
    assert re.search("image05.png' has no mask beside it", messages[1])
    assert re.search("image06.png' .*duplicate record, frame 'pancreas/03/image01.png' .* 'pancreas' mask", messages[2])
    assert re.search("mask00.png' names no structure.*maskXX_<structure>.png", messages[3])
    assert re.search("mask09_pancreas.png' has no frame 'image09.png'", messages[4])
    assert re.search("image02.png' has no maskXX_<structure>.png", messages[5])
    assert len(samples) == 5  # the valid frames are all still there


def test_every_structure_of_the_dsad_registry_is_read(tmp_path: Path):
    counts = write_dsad_layout(tmp_path, frames=44, surgeries=4)
    anatomy = Anatomy(load_config(None, ["anatomy=dsad"]).anatomy)
    samples = load_dsad(tmp_path, anatomy, "left", "", Problems())
    assert len(samples) == counts.frames
    assert {k for s in samples for k in s.masks} == set(STRUCTURES)
    multilabel = [s for s in samples if s.name.startswith("multilabel/")]
    assert multilabel and all(len(s.masks) == len(STRUCTURES) for s in multilabel)  # empty ones included, dropped at build
    splits = split_by_procedure([s.procedure for s in samples], 0.25, 0.25, seed=0)
    assert set(splits) == {"dsad_01", "dsad_02", "dsad_03", "dsad_04"}  # one split per surgery, both sets included

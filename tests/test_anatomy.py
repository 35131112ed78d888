from __future__ import annotations

from pathlib import Path

import pytest

from cme_vlm.anatomy import Anatomy
from cme_vlm.config import load_config
from cme_vlm.errors import DataError
from cme_vlm.schema import Side


@pytest.fixture
def anatomy() -> Anatomy:
    return Anatomy(load_config().anatomy)


def test_paper_structures_present(anatomy: Anatomy):
    assert set(anatomy.keys) == {"preparation_plane", "angels_hair", "inferior_mesenteric_vein", "duodenum", "pancreas"}
    for key in anatomy.keys:
        assert anatomy[key].facts and all(f.source for f in anatomy[key].facts)


def test_synonyms_resolve(anatomy: Anatomy):
    assert anatomy.resolve("IMV") == "inferior_mesenteric_vein"
    assert anatomy.resolve("intestinal_veins") == "inferior_mesenteric_vein"
    assert anatomy.resolve("Angel's hair") == "angels_hair"
    with pytest.raises(DataError, match="ureter.*Known structures"):
        anatomy.resolve("ureter", source="mask ureter/01/mask00.png")


def test_identified_is_first_named(anatomy: Anatomy):
    text = "This is the inferior mesenteric vein, ligated below the pancreas."
    assert anatomy.identified(text) == "inferior_mesenteric_vein"
    assert anatomy.identified("The highlighted region is mesentery.") == "mesentery"
    assert anatomy.identified("Nothing known here.") is None
    assert [m.name for m in anatomy.mentions("angels hair over the duodenum")] == ["angels_hair", "duodenum"]


def test_sides_named():
    assert Anatomy.sides_named("In left-sided CME the IMV ...") == {Side.left}
    assert Anatomy.sides_named("during a right hemicolectomy") == {Side.right}
    assert Anatomy.sides_named("the left ureter") == set()


def test_sixth_structure_from_yaml_only(sixth_structure_experiment: Path):
    cfg = load_config(sixth_structure_experiment)
    anatomy = Anatomy(cfg.anatomy)
    assert len(anatomy.keys) == 6
    assert anatomy.resolve("left ureter") == "ureter"
    assert anatomy.identified("This is the ureter.") == "ureter"
    assert abs(sum(anatomy.proportions().values()) - 1) < 1e-9

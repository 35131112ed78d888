from __future__ import annotations

from pathlib import Path

import pytest

from cme_vlm.anatomy import Anatomy, registry_problems
from cme_vlm.config import check_config, load_config
from cme_vlm.errors import ConfigError, DataError
from cme_vlm.schema import AnatomyConfig, ExperimentConfig, Fact, FactKind, Side, StructureSpec


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


def _registry(*facts: Fact) -> Anatomy:
    return Anatomy(AnatomyConfig(structures={"pancreas": StructureSpec(display_name="pancreas", facts=list(facts))}))


def test_facts_hold_for_their_side_and_phases():
    both = Fact("It is a retroperitoneal gland.", FactKind.role, "s")
    left = Fact("Its lower border marks high IMV ligation in left-sided CME.", FactKind.relation, "s", Side.left)
    flexure = Fact("The lesser sac is entered at its border.", FactKind.landmark, "s", Side.left, ["flexure mobilisation"])
    anatomy = _registry(both, left, flexure)
    assert anatomy.facts_for("pancreas", "right", "flexure mobilisation") == [both]
    assert anatomy.facts_for("pancreas", "left", "vascular ligation") == [both, left]
    assert anatomy.facts_for("pancreas", "left", "Flexure-Mobilisation") == [both, left, flexure]
    assert anatomy.facts_for("pancreas", "", "") == [both]  # an unknown side gets the facts true for both only


def test_a_fact_tag_that_contradicts_its_text_or_a_missing_source_is_refused():
    cfg = _registry(Fact("In right-sided CME it lies under Fredet's fascia.", FactKind.relation, "s", Side.left),
                    Fact("In left-sided CME its border marks the IMV ligation.", FactKind.relation, "s"),
                    Fact("It is a gland.", FactKind.role, "???")).cfg
    problems = registry_problems(cfg)
    assert len(problems) == 3
    assert "facts[0] is tagged side left but its text names the other side" in problems[0]
    assert "facts[1] names only the left side in its text; tag it side: left" in problems[1]
    assert "facts[2] has no source" in problems[2]
    with pytest.raises(ConfigError, match="tag it side: left"):
        check_config(ExperimentConfig(anatomy=cfg))


@pytest.mark.parametrize("name", ["cme", "dsad"])
def test_shipped_registries_source_every_fact_and_tag_it_consistently(name: str):
    anatomy = Anatomy(load_config(None, [f"anatomy={name}"]).anatomy)
    assert registry_problems(anatomy.cfg) == []
    assert all(spec.facts for spec in anatomy.cfg.structures.values())


def test_the_dsad_registry_knows_every_dsad_structure_by_its_folder_name():
    anatomy = Anatomy(load_config(None, ["anatomy=dsad"]).anatomy)
    folders = ["abdominal_wall", "colon", "inferior_mesenteric_artery", "intestinal_veins", "liver", "pancreas",
               "small_intestine", "spleen", "stomach", "ureter", "vesicular_glands"]
    assert [anatomy.resolve(f) for f in folders] == folders
    assert anatomy.resolve("seminal vesicles") == "vesicular_glands" and anatomy.resolve("IMV") == "intestinal_veins"
    assert anatomy.cfg.procedure == "robot-assisted rectal resection"

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cme_vlm.anatomy import Anatomy
from cme_vlm.config import load_config
from cme_vlm.data.synthetic import MANIFEST_NAME, plan_scenes, render_scene, write_synthetic_tree
from cme_vlm.errors import DataError
from cme_vlm.schema import Shape, Side


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))} | {
        MANIFEST_NAME: (root / MANIFEST_NAME).read_bytes()
    }


def test_tree_layout_and_manifest(cfg, tmp_path: Path):
    manifest = write_synthetic_tree(cfg, tmp_path / "frames")
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(rows) == cfg.data.synthetic.n_frames
    anatomy = Anatomy(cfg.anatomy)
    assert len({r["procedure"] for r in rows}) == cfg.data.synthetic.n_procedures
    for row in rows:
        frame = np.asarray(Image.open(tmp_path / "frames" / row["frame"]))
        assert frame.shape == (cfg.data.synthetic.height, cfg.data.synthetic.width, 3)
        assert row["frame"].startswith(f"frames/{row['procedure']}/")
        assert 1 <= len(row["masks"]) <= cfg.data.synthetic.max_structures_per_frame
        for key, rel in row["masks"].items():
            assert Side(row["side"]) in anatomy.sides_for(key)
            assert rel.endswith(f"__{key}.png")
            mask = Image.open(tmp_path / "frames" / rel)
            assert mask.mode == "L"
            values = set(np.unique(np.asarray(mask)))
            assert values == {0, 255}
    assert (tmp_path / "frames" / "config.yaml").is_file()


def test_same_seed_same_bytes_other_seed_differs(cfg, tmp_path: Path):
    write_synthetic_tree(cfg, tmp_path / "a")
    write_synthetic_tree(cfg, tmp_path / "b")
    assert _tree_bytes(tmp_path / "a") == _tree_bytes(tmp_path / "b")
    cfg.data.synthetic.seed = 1
    write_synthetic_tree(cfg, tmp_path / "c")
    other = _tree_bytes(tmp_path / "c")
    first = _tree_bytes(tmp_path / "a")
    assert first[MANIFEST_NAME] != other[MANIFEST_NAME] or any(first[k] != other.get(k) for k in first)
    frame = "frames/proc_00/frame_00000.png"
    assert first[frame] != other[frame]


def test_proportions_follow_the_registry_and_sides_alternate():
    cfg = load_config(None, ["data.synthetic.n_frames=300", "data.synthetic.n_procedures=10"])
    scenes = plan_scenes(cfg)
    counts = Counter(key for s in scenes for key in s.structures)
    total = sum(counts.values())
    for key, share in Anatomy(cfg.anatomy).proportions().items():
        assert counts[key] / total == pytest.approx(share, abs=0.03), key
    assert Counter(s.side for s in scenes) == {"left": 150, "right": 150}
    by_proc = {s.procedure: s.side for s in scenes}
    assert all(s.side == by_proc[s.procedure] for s in scenes)


def test_placement_mirrors_between_sides(cfg):
    # the preparation plane is seen on both sides; its centroid moves to the other half of the frame
    scenes = [s for s in plan_scenes(load_config(None, ["data.synthetic.n_frames=60"])) if "preparation_plane" in s.structures]
    xs = {"left": [], "right": []}
    for scene in scenes[:30]:
        _, masks = render_scene(cfg, scene)
        xs[scene.side].append(np.nonzero(masks["preparation_plane"])[1].mean() / cfg.data.synthetic.width)
    left, right = np.mean(xs["left"]), np.mean(xs["right"])
    assert left == pytest.approx(1 - right, abs=0.1)
    assert abs(left - right) > 0.05


def test_structures_differ_in_colour_under_their_masks(cfg):
    anatomy = Anatomy(cfg.anatomy)
    scenes = plan_scenes(load_config(None, ["data.synthetic.n_frames=80"]))
    means: dict[str, list[np.ndarray]] = {}
    for scene in scenes:
        frame, masks = render_scene(cfg, scene)
        for key, mask in masks.items():
            means.setdefault(key, []).append(frame[mask].mean(axis=0))
    assert set(means) == set(anatomy.keys)
    centre = {k: np.mean(v, axis=0) for k, v in means.items()}
    vein, pancreas = centre["inferior_mesenteric_vein"], centre["pancreas"]
    assert vein[2] > vein[0]  # bluish
    assert pancreas[1] > centre["preparation_plane"][1]  # yellowish


def test_sixth_structure_from_yaml_is_drawn(sixth_structure_experiment: Path, tmp_path: Path):
    cfg = load_config(sixth_structure_experiment, ["data.synthetic.n_frames=40", "data.synthetic.n_procedures=4"])
    assert cfg.anatomy.structures["ureter"].appearance.shape == Shape.tube
    manifest = write_synthetic_tree(cfg, tmp_path / "frames")
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    ureter = [r for r in rows if "ureter" in r["masks"]]
    assert ureter and all(r["side"] == "left" for r in ureter)
    mask = np.asarray(Image.open(tmp_path / "frames" / ureter[0]["masks"]["ureter"]))
    assert (mask == 255).sum() > 100


def test_every_shape_is_drawable(cfg):
    spec = cfg.anatomy.structures["duodenum"]
    for shape in Shape:
        spec.appearance.shape = shape
        scene = next(s for s in plan_scenes(cfg) if "duodenum" in s.structures)
        _, masks = render_scene(cfg, scene)
        assert masks["duodenum"].mean() > 0.004, shape


def test_bad_sizes_are_refused(cfg, tmp_path: Path):
    cfg.data.synthetic.n_frames = 0
    with pytest.raises(DataError, match="n_frames"):
        write_synthetic_tree(cfg, tmp_path / "frames")
    assert not (tmp_path / "frames").exists()

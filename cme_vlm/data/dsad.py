"""The Dresden Surgical Anatomy Dataset (DSAD, Carstens et al., Sci Data 2023, doi 10.1038/s41597-022-01719-2) read
from its own layout, every frame of it::

    <structure>/<NN>/imageXX.png + maskXX.png                one folder per structure, one per surgery NN
    multilabel/<NN>/imageXX.png + maskXX_<structure>.png     one mask per structure on each frame

The file names are those the public loaders read: torch-em's DSAD loader
(constantinpape/torch-em, ``torch_em/data/datasets/medical/dsad.py``) pairs ``imageXX.png`` with the
mask named by replacing "image" with "mask", and leaves out ``multilabel``, whose masks do not follow
that rule; ``imageManagerMultilabel.py`` of jayanpatel789/DTx_OrganDetection_DSAD reads a multilabel
mask's structure as the part of its name after the first underscore (``mask03_abdominal_wall.png``).
No source we found settles where the per-annotator masks sit or whether the multilabel set keeps an
empty mask for a structure out of view, so both forms are accepted: an ``anno_*`` folder, at the top or
inside a surgery's folder, is not read; an all-zero multilabel mask means the structure is not in view
and makes no record. ``weak_labels.csv`` (presence labels, no masks) is not read either.

A frame gives one record per structure mask, as the paper's records are per structure. A frame found
in several places (identical bytes in one surgery) is one sample: a multilabel mask of a structure its
single-structure folder already gives is left out (counted), the single-structure mask is kept.
Every record of surgery NN has the procedure ``dsad_NN``, so splits by procedure are splits by surgery.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from pathlib import Path

from cme_vlm.anatomy import Anatomy
from cme_vlm.data.frames import FrameSample, side_value
from cme_vlm.data.validation import Problems
from cme_vlm.errors import DataError
from cme_vlm.schema import Side

log = logging.getLogger(__name__)

MULTILABEL = "multilabel"
NOT_IN_REGISTRY = "no structure in the registry; add it, or a synonym, to the registry to use it"
_IMAGE = re.compile(r"image(\d+)\.png")
_MULTILABEL_MASK = re.compile(r"mask(\d+)_(.+)\.png")


def _surgeries(folder: Path) -> list[Path]:
    """The surgery folders (``01`` … ``32``) of a structure or multilabel folder."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def _images(folder: Path) -> dict[str, Path]:
    """Frame number -> ``imageXX.png`` of one surgery folder."""
    return {m.group(1): p for p in folder.glob("image*.png") if (m := _IMAGE.fullmatch(p.name))}


def _single_pairs(folder: Path, problems: Problems) -> list[tuple[Path, Path]]:
    """(imageXX.png, maskXX.png) pairs of one surgery folder; a file without its partner is a problem."""
    images = _images(folder)
    masks = {p.name.removeprefix("mask").removesuffix(".png"): p for p in folder.glob("mask*.png")}
    for number in sorted(masks.keys() - images.keys()):
        problems.add("DSAD file", masks[number], f"DSAD mask '{masks[number]}' has no frame 'image{number}.png' "
                     "beside it. Restore the frame or remove the mask.")
    for number in sorted(images.keys() - masks.keys()):
        problems.add("DSAD file", images[number], f"DSAD frame '{images[number]}' has no mask beside it. "
                     "Restore the mask or remove the frame.")
    return [(images[n], masks[n]) for n in sorted(images.keys() & masks.keys())]


def _multilabel_masks(folder: Path, problems: Problems) -> dict[Path, dict[str, Path]]:
    """imageXX.png -> {structure name as written: maskXX_<structure>.png} of one multilabel surgery folder."""
    images, found = _images(folder), {}
    for mask in sorted(folder.glob("mask*.png")):
        match = _MULTILABEL_MASK.fullmatch(mask.name)
        if match is None:
            problems.add("DSAD file", mask, f"DSAD multilabel mask '{mask}' names no structure. "
                         "Name it maskXX_<structure>.png, e.g. mask03_colon.png.")
        elif match.group(1) not in images:
            problems.add("DSAD file", mask, f"DSAD multilabel mask '{mask}' has no frame 'image{match.group(1)}.png' "
                         "beside it. Restore the frame or remove the mask.")
        else:
            found.setdefault(images[match.group(1)], {})[match.group(2)] = mask
    for image in sorted(set(images.values()) - found.keys()):
        problems.add("DSAD file", image, f"DSAD multilabel frame '{image}' has no maskXX_<structure>.png beside it. "
                     "Restore its masks or remove the frame.")
    return found


class _DsadSamples:
    """The samples found so far, one per distinct frame of a surgery, and what was left out."""

    def __init__(self, root: Path, anatomy: Anatomy, side: str, phase: str, problems: Problems) -> None:
        self.root, self.anatomy, self.side, self.phase, self.problems = root, anatomy, side, phase, problems
        self.samples: dict[tuple[str, str], FrameSample] = {}
        self.skipped: dict[str, set[str]] = {}
        self.overlaps = 0

    def _sample(self, image: Path) -> FrameSample:
        """The sample of ``image``'s pixels in its surgery, made on first sight."""
        procedure = f"dsad_{int(image.parent.name):02d}"
        digest = hashlib.sha256(image.read_bytes()).hexdigest()[:16]
        name = image.relative_to(self.root).as_posix()
        return self.samples.setdefault((procedure, digest), FrameSample(procedure, image, {}, self.side, self.phase,
                                                                        name, str(image)))

    def read_structure(self, surgery: Path, key: str) -> None:
        """One surgery folder of structure ``key``: each frame gets its mask."""
        for image, mask in _single_pairs(surgery, self.problems):
            self.problems.attempt("DSAD file", image, self._sample(image).add_mask, key, mask,
                                  f"DSAD frame '{image}' (same pixels as another)")

    def read_multilabel(self, surgery: Path) -> None:
        """One multilabel surgery folder: each frame gets its masks of registry structures, each one optional."""
        for image, masks in _multilabel_masks(surgery, self.problems).items():
            sample = self._sample(image)
            for name, mask in masks.items():
                key = self.anatomy.lookup(name)
                if key is None:
                    self.skipped.setdefault(NOT_IN_REGISTRY, set()).add(f"{MULTILABEL} *_{name}.png")
                elif key in sample.masks and key not in sample.optional:
                    self.overlaps += 1  # the structure folder's mask of this frame is kept
                elif self.problems.attempt("DSAD file", image, sample.add_mask, key, mask,
                                           f"DSAD multilabel frame '{image}' (same pixels as another)") is None:
                    sample.optional.add(key)

    def skip(self, folder: str, reason: str) -> None:
        self.skipped.setdefault(reason, set()).add(folder)

    def notice(self) -> None:
        """One notice of what was not read, and how many multilabel masks repeat a structure folder's."""
        if self.skipped:
            listed = "; ".join(f"{', '.join(sorted(names))} ({why})" for why, names in self.skipped.items())
            log.warning("DSAD folders skipped: %s.", listed)
        if self.overlaps:
            log.info("%d DSAD multilabel mask(s) repeat a structure folder's mask of the same frame; the structure "
                     "folder's mask is kept.", self.overlaps)


def _skip_reason(folder: str, anatomy: Anatomy) -> str | None:
    """Why a top-level DSAD folder is not read, or None when it holds frames of the registry."""
    if folder.startswith("anno_"):
        return "per-annotator masks; the structure folders' reviewed masks are read instead"
    if folder != MULTILABEL and anatomy.lookup(folder) is None:
        return NOT_IN_REGISTRY
    return None


def load_dsad(root: str | Path, anatomy: Anatomy, side: Side | str, phase: str,
              problems: Problems) -> list[FrameSample]:
    """Frame samples of every DSAD frame of a registry structure: the structure folders, then ``multilabel``.

    Folders and multilabel mask names map to registry keys through the registry's synonyms. What is
    not read (a folder or multilabel structure the registry lacks, ``anno_*``) is listed with the
    reason in one notice; a wrong file goes to ``problems``.
    """
    root, side = Path(root), side_value(side.value if isinstance(side, Side) else side, "data.dsad_side")
    if not root.is_dir():
        raise DataError(f"DSAD root '{root}' is not a folder. Set data.root to the dataset's top folder.")
    found = _DsadSamples(root, anatomy, side, phase, problems)
    for folder in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: (p.name == MULTILABEL, p.name)):
        if reason := _skip_reason(folder.name, anatomy):
            found.skip(folder.name, reason)
            continue
        for surgery in _surgeries(folder):
            if folder.name == MULTILABEL:
                found.read_multilabel(surgery)
            else:
                found.read_structure(surgery, anatomy.resolve(folder.name))
    found.notice()
    if not found.samples and not problems:
        raise DataError(f"DSAD root '{root}' holds no frames of registry structures. "
                        "Check the path and the registry's synonyms.")
    return list(found.samples.values())


def count_dsad(root: str | Path, anatomy: Anatomy) -> dict[str, Counter[str]]:
    """Surgery (``dsad_NN``) -> registry structure -> masks found, from file names alone (no image is read).

    An upper bound of the records a build makes: a multilabel mask that turns out empty, or that
    repeats a structure folder's mask of the same frame, makes no record.
    """
    counts: dict[str, Counter[str]] = {}
    sink = Problems()  # the build lists the problems; a count only skips what does not pair
    for folder in (p for p in Path(root).iterdir() if p.is_dir() and not _skip_reason(p.name, anatomy)):
        for surgery in _surgeries(folder):
            found = counts.setdefault(f"dsad_{int(surgery.name):02d}", Counter())
            if folder.name == MULTILABEL:
                names = [name for masks in _multilabel_masks(surgery, sink).values() for name in masks]
                found.update(key for name in names if (key := anatomy.lookup(name)) is not None)
            else:
                found[anatomy.resolve(folder.name)] += len(_single_pairs(surgery, sink))
    return counts

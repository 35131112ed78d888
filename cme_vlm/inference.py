"""``cme-vlm explain``: ask a local model about one frame. Nothing leaves the machine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from rich.console import Console
from rich.panel import Panel

from cme_vlm import atomic
from cme_vlm.anatomy import Anatomy
from cme_vlm.data.overlay import build_overlay, resize_pair
from cme_vlm.data.prompts import student_prompt
from cme_vlm.errors import DataError
from cme_vlm.models.generation import generate
from cme_vlm.models.loading import load_model
from cme_vlm.review_sheet import png_bytes
from cme_vlm.schema import ExperimentConfig

console = Console()


def _read(path: Path, mode: str, what: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode))
    except (FileNotFoundError, UnidentifiedImageError, OSError) as e:
        raise DataError(f"{what} '{path}' cannot be read as an image ({e}). Give a PNG or JPEG file.") from e


def overlay_for(cfg: ExperimentConfig, frame: Path, mask: Path, structure: str | None = None) -> Image.Image:
    """The model's view of ``frame``: resized to ``data.image_size`` with the mask tinted in."""
    pixels = _read(frame, "RGB", "--frame")
    binary = _read(mask, "L", "--mask") > 127
    if binary.shape != pixels.shape[:2]:
        raise DataError(f"--mask '{mask}' is {binary.shape[::-1]} but --frame is {pixels.shape[1::-1]}; give the frame's own mask.")
    if not binary.any():
        raise DataError(f"--mask '{mask}' marks no pixel. Give a binary mask with the structure in white.")
    small, small_mask = resize_pair(pixels, binary, cfg.data.image_size)
    colour = cfg.data.overlay.colour
    if structure and cfg.data.overlay.use_structure_colour:
        colour = Anatomy(cfg.anatomy)[structure].overlay_colour
    alpha = cfg.data.overlay.alpha if cfg.data.overlay.enabled else 0.0
    return Image.fromarray(build_overlay(small, small_mask, colour, alpha))


def _prompt_for(cfg: ExperimentConfig, frame: Path) -> str:
    """The student prompt for a lone frame; side and phase are the config's data defaults."""
    scene = Anatomy(cfg.anatomy).scene(cfg.data.dsad_side.value)
    return student_prompt(cfg.data.prompts, Path(frame).stem, scene, cfg.data.dsad_phase)


def explain(
    cfg: ExperimentConfig, model: Path, frame: Path, mask: Path, structure: str | None = None
) -> str:
    """Overlay ``mask`` on ``frame``, ask the model at ``model`` about it, print and return the answer.

    The overlay image is written as ``<frame stem>_overlay.png`` in the current folder.
    """
    if structure:
        Anatomy(cfg.anatomy).resolve(structure, "--structure")
    image = overlay_for(cfg, Path(frame), Path(mask), structure)
    loaded = load_model(cfg, model)
    prompt = _prompt_for(cfg, Path(frame))
    answer = generate(loaded, [image], [prompt], cfg.eval.max_new_tokens, 1, cfg.generation)[0]
    out = Path.cwd() / f"{Path(frame).stem}_overlay.png"
    atomic.write_bytes(out, png_bytes(image))
    console.print(Panel(answer, title=prompt, subtitle=f"overlay: {out}"))
    return answer

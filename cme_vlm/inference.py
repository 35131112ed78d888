"""``cme-vlm explain``: ask a local model about one frame. Nothing leaves the machine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console
from rich.panel import Panel

from cme_vlm import atomic
from cme_vlm.anatomy import Anatomy
from cme_vlm.data.frames import read_frame, read_mask
from cme_vlm.data.overlay import build_overlay, resize_pair
from cme_vlm.data.prompts import student_prompt
from cme_vlm.errors import DataError
from cme_vlm.models.generation import generate
from cme_vlm.models.placement import load_for_inference
from cme_vlm.review_sheet import png_bytes
from cme_vlm.schema import ExperimentConfig

console = Console()


def _read(flag: str, reader: Callable[..., np.ndarray], path: Path, *args: Any) -> np.ndarray:
    """``reader(path, *args)``, its errors named after the command-line flag that gave ``path``."""
    if not Path(path).is_file():
        raise DataError(f"{flag} '{path}' does not exist. Give a PNG or JPEG file.")
    try:
        return reader(path, *args)
    except DataError as e:
        raise DataError(f"{flag}: {e}") from None


def overlay_for(cfg: ExperimentConfig, frame: Path, mask: Path, structure: str | None = None) -> Image.Image:
    """The model's view of ``frame``: resized to ``data.image_size`` with the mask tinted in.

    Frame and mask are read by the same rules as ``cme-vlm data build`` (``cme_vlm.data.frames``).
    """
    pixels = _read("--frame", read_frame, frame)
    binary = _read("--mask", read_mask, mask, pixels.shape)
    small, small_mask = resize_pair(pixels, binary, cfg.data.image_size)
    colour = cfg.data.overlay.colour
    if structure and cfg.data.overlay.use_structure_colour:
        colour = Anatomy(cfg.anatomy)[structure].overlay_colour
    alpha = cfg.data.overlay.alpha if cfg.data.overlay.enabled else 0.0
    return Image.fromarray(build_overlay(small, small_mask, colour, alpha))


def _prompt_for(cfg: ExperimentConfig, frame: Path, side: str) -> str:
    """The student prompt for a lone frame of a ``side``-sided CME; the phase is the config's data default."""
    return student_prompt(cfg.data.prompts, Path(frame).stem, Anatomy(cfg.anatomy).scene(side), cfg.data.dsad_phase)


def explain(
    cfg: ExperimentConfig, model: Path, frame: Path, mask: Path, structure: str | None = None, side: str | None = None
) -> str:
    """Overlay ``mask`` on ``frame``, ask the model at ``model`` about it, print and return the answer.

    ``side``: the CME's side (``left`` or ``right``), else the config's ``data.dsad_side``; the answer's
    header says which. The overlay image is written as ``<frame name>_overlay.png`` in the current folder.
    """
    if structure:
        Anatomy(cfg.anatomy).resolve(structure, "--structure")
    side_from = "--side" if side else "data.dsad_side, the config's default; --side left|right to change"
    side = side or cfg.data.dsad_side.value
    image = overlay_for(cfg, Path(frame), Path(mask), structure)
    loaded = load_for_inference(cfg, model)
    prompt = _prompt_for(cfg, Path(frame), side)
    answer = generate(loaded, [image], [prompt], cfg.eval.max_new_tokens, 1, cfg.generation)[0]
    out = Path.cwd() / f"{Path(frame).stem}_overlay.png"
    atomic.write_bytes(out, png_bytes(image))
    console.print(Panel(answer, title=f"{side}-sided CME ({side_from})", subtitle=f"overlay: {out}"))
    console.print(f"[dim]asked:[/] {prompt}", highlight=False)
    return answer

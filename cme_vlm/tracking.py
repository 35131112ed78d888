"""Experiment tracking: the W&B runs of the stages (offline unless configured).

``wandb_logger`` is the Lightning logger of the training stages; ``stage_run`` is a plain run for
a stage without a Trainer (preference, evaluation). Both name the run ``<experiment>-<stage>`` with
the stage as ``job_type``, in the same project and group with the experiment config, so a dashboard
shows every stage of an experiment together. Neither logs an image unless ``wandb.allow_image_upload``.

A stage folder has one W&B run: its id is drawn once and kept in the folder (``wandb-run-id``), so
a stage resumed after an interruption logs to the same run (``resume="allow"``; offline, both parts
carry the id and ``wandb sync`` uploads them as one run). A stage that re-runs for a changed config
starts from a cleared folder, and so a new run; a W&B sweep agent's run keeps the agent's id.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import wandb
from lightning.pytorch.loggers import WandbLogger

from cme_vlm import atomic
from cme_vlm.config import to_dict
from cme_vlm.errors import PrivacyError
from cme_vlm.schema import ExperimentConfig, WandbConfig


RUN_ID_FILE = "wandb-run-id"


def stage_run_id(out: Path) -> str:
    """The W&B run id of the stage writing ``out``: a sweep agent's, else drawn once and kept in ``out``."""
    if os.environ.get("WANDB_RUN_ID"):
        return os.environ["WANDB_RUN_ID"]
    path = Path(out) / RUN_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)  # W&B's own ids are 8 lower-case letters and digits
    atomic.write_text(path, run_id + "\n")
    return run_id


def _run_settings(settings: WandbConfig, cfg: ExperimentConfig, job: str, out: Path) -> dict[str, Any]:
    """What every stage's run shares: project, entity, group, mode, ``<experiment>-<stage>`` name, job type, config;
    and the stage folder's own run id, resumed when it exists."""
    resumable = {"id": stage_run_id(out), "resume": "allow"} if settings.mode != "disabled" else {}
    return {"project": settings.project, "entity": settings.entity or None, "group": settings.group or None,
            "name": f"{cfg.name}-{job}", "mode": settings.mode, "job_type": job, "config": to_dict(cfg), **resumable}


class _WandbLogger(WandbLogger):
    """Lightning's logger without the ``anonymous`` argument it always passes, which wandb ≥0.23 only warns about
    (wandb PR #10909)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._wandb_init.pop("anonymous", None)


def wandb_logger(wandb: WandbConfig, cfg: ExperimentConfig, out: Path, job: str) -> Any:
    """A W&B logger (offline unless configured); it never logs images unless allowed."""
    if wandb.mode == "disabled":
        return False
    return _WandbLogger(**_run_settings(wandb, cfg, job, out), tags=wandb.tags, save_dir=str(out), log_model=False)


def ablation_tags(cfg: ExperimentConfig) -> list[str]:
    """``ablation:<name>`` and ``base:<experiment>`` for a run of an ablation, to group runs by."""
    tags = [f"ablation:{cfg.ablation}"] if cfg.ablation else []
    return tags + ([f"base:{cfg.base}"] if cfg.base else [])


def _carries_image(value: Any) -> bool:
    """Whether a logged value holds an image or video, itself or in a table, list or dict."""
    if isinstance(value, wandb.Image | wandb.Video):
        return True
    if isinstance(value, wandb.Table):
        return any(_carries_image(cell) for row in value.data for cell in row)
    if isinstance(value, list | tuple):
        return any(_carries_image(v) for v in value)
    if isinstance(value, Mapping):
        return any(_carries_image(v) for v in value.values())
    return False


class StageRun:
    """A plain W&B run of one stage; ``log`` refuses images unless ``wandb.allow_image_upload``."""

    def __init__(self, run: Any, allow_images: bool) -> None:
        self.run = run
        self.allow_images = allow_images

    def log(self, metrics: Mapping[str, Any]) -> None:
        for key, value in metrics.items():
            if not self.allow_images and _carries_image(value):
                raise PrivacyError(
                    f"W&B run '{self.run.name}': '{key}' holds an image and wandb.allow_image_upload is false. "
                    "Log it without the image, or set wandb.allow_image_upload=true if frames may leave the machine."
                )
        self.run.log(dict(metrics))


@contextmanager
def stage_run(cfg: ExperimentConfig, out: Path, job: str) -> Iterator[StageRun]:
    """A W&B run of the stage ``job`` under ``out/wandb``, finished on leaving; ``wandb.mode=disabled`` logs nowhere."""
    run = wandb.init(**_run_settings(cfg.wandb, cfg, job, out), tags=[*cfg.wandb.tags, *ablation_tags(cfg)],
                     dir=str(out), reinit="create_new")
    try:
        yield StageRun(run, cfg.wandb.allow_image_upload)
    finally:
        run.finish()


def flat_metrics(prefix: str, tree: Mapping[str, Any]) -> dict[str, float]:
    """The numbers in a nested summary as ``{"prefix/a/b": value}``; strings and None are left out."""
    flat: dict[str, float] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flat_metrics(f"{prefix}/{key}", value))
        elif isinstance(value, int | float):
            flat[f"{prefix}/{key}"] = value
    return flat

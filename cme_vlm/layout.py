"""Where a run keeps each stage's output: ``runs/<name>-<time>/NN-<stage>``."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from cme_vlm.schema import ExperimentConfig

STAGES = ("frames", "data", "teacher", "sft", "preference", "dpo", "eval")


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def stage(self, name: str) -> Path:
        """The folder of a stage, e.g. ``runs/demo-20261125-2230/03-sft``."""
        return self.root / f"{STAGES.index(name):02d}-{name}"

    @property
    def frames(self) -> Path:
        return self.stage("frames")

    @property
    def data(self) -> Path:
        return self.stage("data")

    @property
    def teacher(self) -> Path:
        return self.stage("teacher")

    @property
    def sft(self) -> Path:
        return self.stage("sft")

    @property
    def preference(self) -> Path:
        return self.stage("preference")

    @property
    def dpo(self) -> Path:
        return self.stage("dpo")

    @property
    def eval(self) -> Path:
        return self.stage("eval")

    @classmethod
    def for_config(cls, cfg: ExperimentConfig, run_dir: str | Path | None = None, new: bool = False) -> RunLayout:
        """``run_dir`` if given; else the latest ``<output_dir>/<name>-*`` run, or a new one."""
        if run_dir:
            return cls(Path(run_dir))
        base = Path(cfg.output_dir)
        stamp = re.compile(rf"{re.escape(cfg.name)}-\d{{8}}-\d{{6}}")
        runs = sorted(p for p in base.glob(f"{cfg.name}-*") if p.is_dir() and stamp.fullmatch(p.name)) if base.is_dir() else []
        if runs and not new:
            return cls(runs[-1])
        return cls(base / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")

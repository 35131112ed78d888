"""``AblationCallback``: tag the run with its ablation and base experiment and log the config diff.

W&B can then group runs by ``ablation``/``base`` and show exactly which keys an ablation changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger

from cme_vlm.config import load_config, to_dict
from cme_vlm.config_files import SHIPPED
from cme_vlm.errors import ConfigError
from cme_vlm.schema import ExperimentConfig
from cme_vlm.tracking import ablation_tags

IGNORED = ("name", "ablation", "base", "defaults")  # differ by definition; not what the ablation varies


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def config_diff(run: ExperimentConfig, base: ExperimentConfig) -> dict[str, dict[str, Any]]:
    """Keys whose values differ, as ``{"data.overlay.enabled": {"base": True, "run": False}}``."""
    a, b = _flatten(to_dict(run)), _flatten(to_dict(base))
    return {
        k: {"base": b.get(k), "run": a.get(k)}
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k) and k.split(".")[0] not in IGNORED
    }


class AblationCallback(Callback):
    """On fit start: adds ablation tags and logs ``ablation``, ``base`` and ``ablation_diff`` to the run config."""

    def __init__(self, cfg: ExperimentConfig, experiments_dir: Path = SHIPPED / "experiments"):
        self.cfg = cfg
        self.experiments_dir = Path(experiments_dir)

    def diff(self) -> dict[str, dict[str, Any]]:
        if not self.cfg.base:
            return {}
        path = self.experiments_dir / f"{self.cfg.base}.yaml"
        try:
            return config_diff(self.cfg, load_config(path))
        except ConfigError as e:  # the base may need local files this machine lacks; the run goes on
            return {"_error": {"base": str(path), "run": str(e).splitlines()[0]}}

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for logger in trainer.loggers:
            if not isinstance(logger, WandbLogger) or not trainer.is_global_zero:
                continue
            run = logger.experiment
            run.tags = tuple(dict.fromkeys((*(run.tags or ()), *ablation_tags(self.cfg))))
            diff = self.diff()
            run.config.update({"ablation": self.cfg.ablation or "none", "base_experiment": self.cfg.base or "none",
                               "ablation_diff": diff}, allow_val_change=True)
            run.summary["ablation_changed_keys"] = sorted(diff)

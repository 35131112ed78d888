"""The model folders a config needs on this machine, and whether each is there, before anything runs.

This machine has no model hub: the base model's weights (``model.path``) and the BERTScore model
of the evaluation (``eval.bertscore``, roberta-large under ``eval=paper``) must be local folders or
already in the local Hugging Face cache. The dry-run lists them with the key that points at each,
so a missing one is found before training rather than at the evaluation, hours later.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from cme_vlm.console import folding_table
from cme_vlm.errors import ModelError
from cme_vlm.schema import ExperimentConfig
from cme_vlm.scoring.metrics import bertscore_weights


@dataclass(frozen=True)
class LocalModel:
    """One model a run loads from disk: what it is for, the config key that points at it, whether it is here."""

    role: str  # e.g. "BERTScore model (evaluation)"
    key: str  # the config key to set, e.g. "eval.bertscore.path"
    status: str  # where it was found, or how to make it available
    missing: bool = False


def _hub_snapshot(repo_id: str) -> Path | None:
    """The local Hugging Face cache's copy of ``repo_id``, if one was downloaded before."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def _base_model(cfg: ExperimentConfig) -> LocalModel:
    source, role = cfg.model.path, f"base model ({cfg.model.name})"
    if not source:
        return LocalModel(role, "model.path", "none needed: built from model.architecture with random weights")
    folder = Path(source).expanduser()
    hub_id = source.count("/") == 1 and not os.path.isabs(source) and not folder.exists()
    where = folder if (folder / "config.json").is_file() else _hub_snapshot(source) if hub_id else None
    if where:
        return LocalModel(role, "model.path", f"found: {where}")
    what = "neither a local folder nor in the Hugging Face cache" if hub_id else "a folder without config.json"
    return LocalModel(role, "model.path", f"missing: {source} is {what}; download the weights where the hub is "
                      "reachable and set model.path to their folder", missing=True)


def _bertscore_model(cfg: ExperimentConfig) -> LocalModel:
    b = cfg.eval.bertscore
    role = f"BERTScore model (evaluation; {b.model}, layer {b.num_layers})"
    try:
        return LocalModel(role, "eval.bertscore.path", f"found: {bertscore_weights(b)}")
    except ModelError:
        where = f"'{b.path}' holds no model" if b.path else f"{b.model} is not in the Hugging Face cache"
        return LocalModel(role, "eval.bertscore.path", f"missing: {where}; copy it here and set eval.bertscore.path "
                          "to its folder, or use eval=offline (all-MiniLM-L6-v2, shipped)", missing=True)


def local_models(cfg: ExperimentConfig) -> list[LocalModel]:
    """Every model the stages of ``cfg`` load from this machine (the models they train are not listed)."""
    return [_base_model(cfg), _bertscore_model(cfg)]


def local_models_table(cfg: ExperimentConfig) -> Table:
    """The dry-run's table of ``local_models``: a missing one says which key to set."""
    table = folding_table("models loaded from this machine (no hub access)", "model", "key", "status")
    for m in local_models(cfg):
        table.add_row(m.role, m.key, f"[red]{m.status}[/]" if m.missing else m.status)
    return table

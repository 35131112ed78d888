"""Where config groups and experiments are found: the user's folder, the experiment's own tree, the shipped ones.

A config group option (``model: tiny``) is the file ``<configs>/model/tiny.yaml`` of the first
folder on the search path that has it:

1. the user's own configs folder (``--configs DIR`` or ``$CME_VLM_CONFIGS``): a new anatomy or
   model goes there, the installed package stays untouched;
2. the ``configs/`` folder of the experiment's own tree (``my-study/experiments/x.yaml`` next to
   ``my-study/configs/``);
3. the configs shipped with cme-vlm: the repository's ``configs/`` in a source checkout, the
   wheel's copy (``cme_vlm/defaults/configs``) once installed.

Experiments are found the same way: a path as given, else among the shipped experiments.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cme_vlm.errors import ConfigError

USER_CONFIGS_ENV = "CME_VLM_CONFIGS"
REPO_ROOT = Path(__file__).resolve().parents[1]
_PACKAGED = Path(__file__).resolve().parent / "defaults"
SHIPPED = _PACKAGED if (_PACKAGED / "configs").is_dir() else REPO_ROOT  # holds configs/ and experiments/
DEFAULT_EXPERIMENT = SHIPPED / "experiments" / "demo.yaml"

# config group -> folder under configs/
GROUP_FOLDERS = {
    "anatomy": "anatomy",
    "data": "data",
    "teacher": "teacher",
    "model": "model",
    "sft": "train",
    "preference": "preference",
    "dpo": "train",
    "eval": "eval",
}


@dataclass(frozen=True)
class ConfigSearch:
    """The configs folders to look in, first match wins."""

    folders: tuple[Path, ...]

    @classmethod
    def for_experiment(cls, experiment: Path, user: str | Path | None = None) -> ConfigSearch:
        """The search path for ``experiment``: the user's folder, its tree's ``configs/``, the shipped one."""
        user = user or os.environ.get(USER_CONFIGS_ENV, "")
        folders = []
        if user:
            if not Path(user).is_dir():
                raise ConfigError(f"configs folder '{user}' (--configs or ${USER_CONFIGS_ENV}) does not exist. "
                                  "Give a folder holding group folders such as anatomy/ and model/.")
            folders.append(Path(user).resolve())
        tree = next((p / "configs" for p in experiment.resolve().parents if (p / "configs").is_dir()), None)
        folders += [f.resolve() for f in (tree, SHIPPED / "configs") if f is not None]
        return cls(tuple(dict.fromkeys(folders)))  # a checkout's experiments/ and the shipped configs are one folder

    def choices(self, group: str) -> list[str]:
        """Every option of ``group`` on the search path."""
        return sorted({p.stem for f in self.folders for p in (f / GROUP_FOLDERS[group]).glob("*.yaml")})

    def group_file(self, group: str, choice: str) -> Path | None:
        return next((p for f in self.folders if (p := f / GROUP_FOLDERS[group] / f"{choice}.yaml").is_file()), None)

    def base_experiment(self, name: str, beside: Path) -> Path:
        """The experiment ``base: name`` refers to: beside the file, else in an ``experiments/`` on the path."""
        candidates = [beside.parent / f"{name}.yaml", *(f.parent / "experiments" / f"{name}.yaml" for f in self.folders)]
        return next((p for p in candidates if p.is_file()), candidates[0])


def find_experiment(experiment: str | Path | None) -> Path:
    """The experiment file: as given, else the shipped one of that path or name (``experiments/paper.yaml``, ``paper``)."""
    if not experiment:
        return DEFAULT_EXPERIMENT
    path = Path(experiment)
    if path.is_file() or path.is_absolute():
        return path
    shipped = SHIPPED / "experiments"
    for candidate in (SHIPPED / path, shipped / path, shipped / f"{path}.yaml"):
        if candidate.is_file():
            return candidate
    names = sorted(str(p.relative_to(shipped).with_suffix("")) for p in shipped.rglob("*.yaml"))
    raise ConfigError(f"experiment '{experiment}' does not exist here, nor among the shipped ones ({', '.join(names)}). "
                      "Check the path.")

"""Config search: the user's folder first, then the experiment's own tree, then the shipped configs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cme_vlm.config import load_config
from cme_vlm.config_files import REPO_ROOT, USER_CONFIGS_ENV, find_experiment
from cme_vlm.errors import ConfigError


@pytest.fixture
def user_configs(tmp_path: Path) -> Path:
    """A user's configs folder with a new anatomy and a model that shadows the shipped ``tiny``."""
    folder = tmp_path / "my-configs"
    (folder / "anatomy").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "configs" / "anatomy" / "cme.yaml", folder / "anatomy" / "mine.yaml")
    (folder / "model").mkdir()
    tiny = (REPO_ROOT / "configs" / "model" / "tiny.yaml").read_text()
    (folder / "model" / "tiny.yaml").write_text(tiny + "max_pixels: 40000\n")
    return folder


def test_a_users_folder_adds_options_and_is_searched_first(user_configs: Path):
    cfg = load_config(None, ["anatomy=mine"], configs=user_configs)
    assert cfg.defaults["anatomy"] == "mine" and cfg.anatomy.structures
    assert cfg.model.max_pixels == 40000  # the user's tiny.yaml, not the shipped one
    assert load_config().model.max_pixels != 40000


def test_the_environment_variable_names_the_users_folder(user_configs: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(USER_CONFIGS_ENV, str(user_configs))
    assert load_config(None, ["anatomy=mine"]).defaults["anatomy"] == "mine"


def test_a_missing_users_folder_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match="my-configs.*does not exist"):
        load_config(None, [], configs=tmp_path / "my-configs")


def test_shipped_experiments_are_found_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    assert find_experiment("experiments/paper.yaml") == REPO_ROOT / "experiments" / "paper.yaml"
    assert find_experiment("paper") == REPO_ROOT / "experiments" / "paper.yaml"
    assert find_experiment("ablations/no_overlay").name == "no_overlay.yaml"
    with pytest.raises(ConfigError, match="nor among the shipped ones"):
        find_experiment("experiments/nope.yaml")

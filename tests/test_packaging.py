"""cme-vlm as an installed package: the wheel carries its configs and experiments and nothing generic.

The wheel is built from this checkout and installed into a fresh virtual environment that sees
the dependencies already installed here; ``cme-vlm`` then plans the demo and the paper's run from
an empty folder, and a user's own configs folder adds an anatomy the package does not ship.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from cme_vlm.bench.explain_memory import cached_explain_memory
from cme_vlm.bench.memory import SHIPPED_MEASUREMENTS, cached_step_memory
from cme_vlm.config import load_config
from cme_vlm.config_files import REPO_ROOT


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    source = out / "source"  # a copy: building must not write into the checkout
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "*.egg-info", "build",
                                                                      "__pycache__", ".anchors", ".whl", "bench/out"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(source)], out)
    return next(out.glob("cme_vlm-*.whl"))


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``cme-vlm`` script of a fresh environment with only the wheel installed (dependencies seen from here)."""
    env_dir = tmp_path_factory.mktemp("env") / "venv"
    venv.create(env_dir, with_pip=True)
    site = next((env_dir / "lib").glob("python*/site-packages"))
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # not its .pth files: no editable
    _run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], env_dir)
    return env_dir / "bin" / "cme-vlm"


@pytest.mark.slow
def test_the_wheel_holds_the_package_its_configs_and_no_generic_top_level_module(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"cme_vlm"}
    for shipped in ("cme_vlm/defaults/configs/model/tiny.yaml", "cme_vlm/defaults/experiments/demo.yaml",
                    "cme_vlm/defaults/experiments/ablations/no_overlay.yaml", "cme_vlm/callbacks/__init__.py"):
        assert shipped in names, shipped
    measured = sorted(p.name for p in (REPO_ROOT / "cme_vlm" / "bench" / "measurements").glob("*.json"))
    assert measured and measured == sorted(Path(n).name for n in names if "/bench/measurements/" in n)


@pytest.mark.slow
def test_the_installed_command_plans_runs_from_an_empty_folder(installed: Path, tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = _run([str(installed), "run", "--dry-run"], empty, env)
    assert "plan for 'demo'" in out and "00-frames" in out
    out = _run([str(installed), "run", "experiments/paper.yaml", "--dry-run"], empty, env)
    assert "plan for 'paper'" in out and "training memory" in out
    paper = load_config(REPO_ROOT / "experiments" / "paper.yaml", [])
    shipped = [cached_step_memory(paper, stage, folders=(SHIPPED_MEASUREMENTS,)) for stage in ("sft", "dpo")]
    shipped.append(cached_explain_memory(paper, folders=(SHIPPED_MEASUREMENTS,)))
    assert all(m is not None and f"{m.peak / 2**30:.1f}" in out for m in shipped), out  # the README's figures
    assert "not measured" not in out
    assert not any(empty.iterdir())  # a dry run writes nothing


@pytest.mark.slow
def test_a_users_configs_folder_extends_the_installed_package(installed: Path, tmp_path: Path):
    mine = tmp_path / "my-configs" / "anatomy"
    mine.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "configs" / "anatomy" / "cme.yaml", mine / "right_hemicolectomy.yaml")
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "CME_VLM_CONFIGS": str(mine.parent)}
    out = _run([str(installed), "run", "--dry-run", "anatomy=right_hemicolectomy"], tmp_path, env)
    assert "plan for 'demo'" in out

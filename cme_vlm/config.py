"""Compose, override, validate and save experiment configs.

An experiment YAML names config groups under ``defaults`` (``model: tiny`` reads
``configs/model/tiny.yaml`` into the ``model`` section), may build on another experiment
with ``base: demo``, and sets any other key directly. Command-line overrides come last, as
``a.b=1`` or ``--a.b=1`` (the form a W&B sweep agent passes); ``model=qwen2_5_vl_7b``
selects a group. Every key and type is checked against ``cme_vlm.schema``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, get_type_hints

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cme_vlm import atomic
from cme_vlm.anatomy import registry_problems
from cme_vlm.config_files import GROUP_FOLDERS, ConfigSearch, find_experiment
from cme_vlm.errors import ConfigError
from cme_vlm.families import Capability, refusals
from cme_vlm.schema import CacheKind, ComponentMode, ExperimentConfig, Switch

CONFIG_FILENAME = "config.yaml"


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{what} '{path}' does not exist. Check the path, or run from the repository root.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} '{path}' is not valid YAML: {e}. Fix the syntax at the position shown.") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{what} '{path}' must hold a mapping of keys, not {type(data).__name__}.")
    return data


def _group_file(search: ConfigSearch, group: str, choice: str, source: str) -> Path:
    """The file of ``group=choice``; an unknown one names the config group folders and their choices, each once."""
    if group not in GROUP_FOLDERS:
        raise ConfigError(
            f"{source}: unknown config group '{group}'. Valid groups: {', '.join(GROUP_FOLDERS)}."
        )
    path = search.group_file(group, choice)
    if path is None:
        choices = search.choices(group)
        where = ", ".join(str(f / GROUP_FOLDERS[group]) for f in search.folders)
        raise ConfigError(f"{source}: no {group} config '{choice}'{_did_you_mean(choice, choices)} in the config group "
                          f"folder {where}. Choices: {', '.join(choices)}; or add {choice}.yaml to your own configs "
                          f"folder's {GROUP_FOLDERS[group]}/ (--configs DIR).")
    return path


def _group_node(search: ConfigSearch, group: str, choice: str, source: str) -> dict[str, Any]:
    return {group: _read_yaml(_group_file(search, group, choice, source), f"{group} config")}


def _did_you_mean(word: str, options: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def _schema_keys(full_key: str) -> list[str]:
    """The keys the schema allows beside ``full_key`` (its parent's fields)."""
    cls: Any = ExperimentConfig
    for part in full_key.split(".")[:-1]:
        if not (isinstance(cls, type) and is_dataclass(cls)):
            return []
        hints = get_type_hints(cls)
        if part not in hints:
            return []
        cls = hints[part]
        args = getattr(cls, "__args__", None)
        if args:  # dict[str, X] / list[X]: step into X
            cls = args[-1]
    if isinstance(cls, type) and is_dataclass(cls):
        return [f.name for f in fields(cls)]
    return []


def _schema_paths(cls: Any = ExperimentConfig, prefix: str = "") -> list[str]:
    """Every key path of the schema, sections and leaves (``data``, ``data.synthetic``, ``data.synthetic.n_frames``)."""
    paths = []
    for name, hint in get_type_hints(cls).items():
        paths.append(prefix + name)
        if isinstance(hint, type) and is_dataclass(hint):
            paths += _schema_paths(hint, f"{prefix}{name}.")
    return paths


def _full_path_hint(key: str) -> str:
    """`` (did you mean 'data.synthetic.n_frames'?)`` for ``data.n_frames``: the schema paths ending as the key does."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        tail = ".".join(parts[-n:])
        found = [p for p in _schema_paths() if p.endswith("." + tail) and p != key]
        if found:
            return f" (did you mean {' or '.join(repr(p) for p in found[:3])}?)"
    return ""


def _explain(e: OmegaConfBaseException, source: str, override: str = "") -> ConfigError:
    key = getattr(e, "full_key", None) or getattr(e, "key", None) or "?"
    first = str(e).splitlines()[0]
    valid = _schema_keys(str(key))
    leaf = str(key).split(".")[-1]
    if valid and leaf not in valid:
        full = override or str(key)
        parent = full.rpartition(".")[0]
        hint = _full_path_hint(full) or _did_you_mean(leaf, valid, prefix=f"{parent}." if parent else "")
        return ConfigError(f"{source}: unknown key '{full}'{hint}. Valid keys here: {', '.join(valid)}.")
    return ConfigError(f"{source}: bad value for '{key}': {first}. Fix the value in the file or override.")


def _merge(base: DictConfig, node: dict[str, Any], source: str, override: str = "") -> DictConfig:
    try:
        return OmegaConf.merge(base, node)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise _explain(e, source, override) from None


def _select_group(cfg: DictConfig, search: ConfigSearch, group: str, choice: str, source: str) -> DictConfig:
    """Reset a section to its schema defaults, then merge the chosen group file onto it."""
    node = _group_node(search, group, choice, source)
    fresh = OmegaConf.structured(ExperimentConfig)
    cfg = _merge(cfg, {"defaults": {group: choice}}, source)
    cfg[group] = fresh[group]
    return _merge(cfg, node, f"{source} (group {group}={choice})")


def _compose_file(
    path: Path, search: ConfigSearch, choices: dict[str, str], seen: tuple[Path, ...] = ()
) -> DictConfig:
    """Compose one experiment file; ``choices`` replace the group names its ``defaults`` give."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"experiment '{path}' builds on itself through 'base'. Remove the cycle.")
    body = _read_yaml(path, "experiment")
    base_name = body.get("base", "")
    if base_name:
        cfg = _compose_file(search.base_experiment(base_name, path), search, choices, seen + (path,))
    else:
        cfg = OmegaConf.structured(ExperimentConfig)
    defaults = body.pop("defaults", {}) or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{path}: 'defaults' must map groups to names, e.g. 'model: tiny'.")
    for group, choice in defaults.items():
        cfg = _select_group(cfg, search, group, str(choices.get(group, choice)), str(path))
    return _merge(cfg, body, str(path))


def _parse_value(raw: str) -> Any:
    """A YAML scalar or collection; YAML 1.1 leaves ``1e-06`` (how wandb writes small floats) a string."""
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_overrides(args: list[str]) -> list[tuple[str, Any]]:
    """``a.b=1`` / ``--a.b=1`` / ``--a.b 1`` -> [(key, value)] with YAML-typed values."""
    pairs: list[tuple[str, Any]] = []
    i = 0
    while i < len(args):
        arg = args[i].removeprefix("--")
        if "=" in arg:
            key, raw = arg.split("=", 1)
        elif args[i].startswith("--") and i + 1 < len(args):
            key, raw = arg, args[i + 1]
            i += 1
        else:
            raise ConfigError(f"override '{args[i]}' has no value. Write it as key=value, e.g. sft.lr=1e-5.")
        pairs.append((key.strip(), _parse_value(raw)))
        i += 1
    return pairs


def load_config(
    experiment: str | Path | None = None, overrides: list[str] | None = None, configs: str | Path | None = None
) -> ExperimentConfig:
    """Compose an experiment file (default: the shipped ``experiments/demo.yaml``) with overrides and validate it.

    A group override (``model=qwen2_5_vl_7b``) replaces that group wherever the experiment or
    its bases select it, so the section comes from the new group file alone. ``configs``: the
    user's own configs folder, searched first (``cme_vlm.config_files``).
    """
    path = find_experiment(experiment)
    search = ConfigSearch.for_experiment(path, configs)
    pairs = parse_overrides(overrides or [])
    choices = {k: v for k, v in pairs if k in GROUP_FOLDERS and isinstance(v, str)}
    for group, choice in choices.items():  # an unknown choice is the override's, not the experiment file's
        _group_file(search, group, choice, f"override '{group}={choice}'")
    cfg = _compose_file(path, search, choices)
    for group, choice in choices.items():
        if cfg.defaults.get(group) != choice:  # a group the experiment never selected
            cfg = _select_group(cfg, search, group, choice, f"override '{group}={choice}'")
    for key, value in pairs:
        if key in choices:
            continue
        node: dict[str, Any] = {}
        cursor = node
        *parents, leaf = key.split(".")
        for part in parents:
            cursor = cursor.setdefault(part, {})
        cursor[leaf] = value
        cfg = _merge(cfg, node, f"override '{key}={value}'", key)
    try:
        typed: ExperimentConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        raise _explain(e, str(path)) from None
    check_config(typed)
    return typed


def check_config(cfg: ExperimentConfig) -> None:
    """Checks the types cannot express: ranges and contradictions."""
    problems = []
    d = cfg.data
    if not 0 <= d.overlay.alpha <= 1:
        problems.append(f"data.overlay.alpha={d.overlay.alpha} must lie in [0, 1]")
    if not (0 <= d.val_fraction < 1 and 0 <= d.test_fraction < 1 and d.val_fraction + d.test_fraction < 1):
        problems.append("data.val_fraction + data.test_fraction must be below 1, each in [0, 1)")
    if not d.prompts.templates:
        problems.append("data.prompts.templates is empty; give at least one prompt")
    if not cfg.anatomy.structures:
        problems.append("anatomy.structures is empty; select an anatomy group, e.g. defaults: {anatomy: cme}")
    problems += registry_problems(cfg.anatomy)
    for stage in ("sft", "dpo"):
        train = getattr(cfg, stage)
        modes = {c: getattr(train.freezing, c).value for c in ("vision_encoder", "merger", "language_model")}
        if all(m == "freeze" for m in modes.values()):
            problems.append(f"{stage}.freezing freezes every component, so nothing would train; set one to train or lora")
        for component, mode in modes.items():
            if mode == "lora" and component not in train.freezing.lora:
                problems.append(f"{stage}.freezing.{component}=lora but {stage}.freezing.lora has no '{component}' entry")
    hot = [i for i, s in enumerate(cfg.preference.sampling) if s.temperature <= 0]
    if hot:
        problems.append(f"preference.sampling[{hot[0]}].temperature must be above 0 (sampling); "
                        "greedy answers come from the evaluation stage")
    if cfg.generation.compile is Switch.always and cfg.generation.cache is CacheKind.dynamic:
        problems.append("generation.compile=always needs a fixed-shape KV cache, but generation.cache=dynamic; "
                        "set generation.cache=static (or auto), or generation.compile=never")
    if cfg.preference.rounds < 1:
        problems.append(f"preference.rounds={cfg.preference.rounds}: give 1 (one DPO round, as the paper) or more")
    if cfg.preference.k < 2:
        problems.append(f"preference.k={cfg.preference.k}: at least 2 candidates are needed for a pair")
    if cfg.preference.k > len(cfg.preference.sampling):
        problems.append(
            f"preference.k={cfg.preference.k} but only {len(cfg.preference.sampling)} preference.sampling settings; "
            "give one setting per candidate"
        )
    w = cfg.eval.judge_weights
    if w.clinical < 0 or w.conciseness < 0 or w.clinical + w.conciseness <= 0:
        problems.append("eval.judge_weights must be non-negative with a positive sum")
    problems += refusals(cfg.model.family, family_requests(cfg))
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


def family_requests(cfg: ExperimentConfig) -> dict[Capability, list[str]]:
    """The settings that ask the model family for a capability some families lack."""
    stages = [(name, getattr(cfg, name)) for name in ("sft", "dpo")]
    return {
        Capability.padding_free: [f"{name}.padding_free=true" for name, t in stages if t.padding_free],
        Capability.merger_lora: [f"{name}.freezing.merger=lora" for name, t in stages
                                 if t.freezing.merger is ComponentMode.lora],
    }


def to_yaml(cfg: ExperimentConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Any) -> Any:
    """A plain, JSON-able view of a config, any of its sections or collections, or a scalar."""
    if is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, list):
        return [to_dict(v) for v in cfg]
    return cfg.value if isinstance(cfg, Enum) else cfg


def config_value(cfg: Any, key: str) -> Any:
    """The value at a dotted ``key`` (``"data.synthetic.n_frames"``) of a config or section."""
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def fingerprint(*sections: Any) -> str:
    """A stable hash of config sections, to tell whether a stage's inputs changed."""
    blob = json.dumps([to_dict(s) for s in sections], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_config(cfg: ExperimentConfig, folder: str | Path) -> Path:
    """Write the fully resolved config beside an output."""
    path = Path(folder) / CONFIG_FILENAME
    atomic.write_text(path, to_yaml(cfg))
    return path


def load_saved_config(folder: str | Path) -> ExperimentConfig:
    """Read a resolved config saved by ``save_config``."""
    path = Path(folder) / CONFIG_FILENAME
    body = _read_yaml(path, "saved config")
    cfg = _merge(OmegaConf.structured(ExperimentConfig), body, str(path))
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]

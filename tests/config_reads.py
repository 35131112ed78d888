"""Which config keys code reads while it runs: the check behind the stage registry's declared ``reads``.

``record_reads(cfg)`` gives a deep copy of ``cfg`` whose every read of a leaf value (a number,
string, list, enum … at ``data.overlay.alpha``) is recorded by its dotted key while the context is
open. Dataclasses inside lists or dicts (``preference.sampling``, ``anatomy.structures``) record
the key of their container. Reads made for tracking or provenance are not reads a stage's
outputs depend on and are left out: anything under ``TRACKING_KEYS``, and reads made from the
W&B callbacks and loggers (``cme_vlm.callbacks``, ``cme_vlm.tracking``) or while saving the resolved
config beside an output (``cme_vlm.config.save_config``).
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cme_vlm import schema
from cme_vlm.stages import TRACKING_KEYS

PATH_ATTR = "_config_key"
CONTAINED_ATTR = "_config_contained"
PROVENANCE_MODULES = ("cme_vlm.callbacks", "cme_vlm.tracking")
PROVENANCE_FUNCTIONS = ("save_config",)


def _schema_classes() -> list[type]:
    return [c for c in vars(schema).values() if isinstance(c, type) and dataclasses.is_dataclass(c)]


def _label(node: Any, key: str, contained: bool = False) -> None:
    """Write each dataclass's dotted key into it; items of lists and dicts take their container's key."""
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        object.__setattr__(node, PATH_ATTR, key)
        object.__setattr__(node, CONTAINED_ATTR, contained)
        for f in dataclasses.fields(node):
            child = f"{key}.{f.name}" if key and not contained else (key or f.name)
            _label(object.__getattribute__(node, f.name), child, contained)
    elif isinstance(node, (list, tuple)):
        for item in node:
            _label(item, key, True)
    elif isinstance(node, dict):
        for item in node.values():
            _label(item, key, True)


def _for_provenance() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith(PROVENANCE_MODULES) or frame.f_code.co_name in PROVENANCE_FUNCTIONS:
            return True
        frame = frame.f_back
    return False


@contextmanager
def record_reads(cfg: schema.ExperimentConfig) -> Iterator[tuple[schema.ExperimentConfig, set[str]]]:
    """``(tracked copy of cfg, the set its reads go into)``; recording stops when the context closes."""
    reads: set[str] = set()
    tracked = copy.deepcopy(cfg)
    _label(tracked, "")
    classes = _schema_classes()
    own = {c: vars(c)["__getattribute__"] for c in classes if "__getattribute__" in vars(c)}
    field_names = {c: {f.name for f in dataclasses.fields(c)} for c in classes}

    def getattribute(self: Any, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if name in field_names.get(type(self), ()):
            state = object.__getattribute__(self, "__dict__")
            key = state.get(PATH_ATTR)
            if key is not None and not (dataclasses.is_dataclass(value) and not state.get(CONTAINED_ATTR)):
                full = key if state.get(CONTAINED_ATTR) else (f"{key}.{name}" if key else name)
                if full.split(".")[0] not in TRACKING_KEYS and not _for_provenance():
                    reads.add(full)
        return value

    for c in classes:
        c.__getattribute__ = getattribute
    try:
        yield tracked, reads
    finally:
        for c in classes:
            if c in own:
                c.__getattribute__ = own[c]
            else:
                del c.__getattribute__


def leaf_keys(node: Any, prefix: str = "") -> list[str]:
    """Every leaf key of a config: nested dataclasses are walked, lists and dicts are one value."""
    keys = []
    for f in dataclasses.fields(node):
        value, key = getattr(node, f.name), f"{prefix}{f.name}"
        keys += leaf_keys(value, key + ".") if dataclasses.is_dataclass(value) else [key]
    return keys

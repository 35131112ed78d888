"""Stage functions named as ``"module:function"``, imported only when called (keeps start-up light)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def stage_function(target: str) -> Callable[..., Any]:
    """The function that ``target`` (``"package.module:function"``) names."""
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)

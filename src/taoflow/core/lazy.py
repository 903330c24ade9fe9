"""Heavy libraries imported on first use, so a ``kedro`` command starts in seconds.

Building the registry imports every stage's nodes; were each to import torch, transformers,
TRL or MLflow at module level, every command (``kedro registry list`` included) would pay
their import before doing anything. ``torch = lazy_module("torch")`` binds a stand-in that
imports the real module the first time one of its attributes is read and then behaves as it.
Only for attribute use (``torch.no_grad()``): a class that subclasses a library class still
needs the real import, so such modules are imported inside the functions that use them.
"""

from __future__ import annotations

import functools
import importlib
import types
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class LazyModule(types.ModuleType):
    """A module stand-in that imports ``name`` when an attribute is first read."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__dict__["_lazy_target"] = name

    def _load(self) -> types.ModuleType:
        return importlib.import_module(self.__dict__["_lazy_target"])

    def __getattr__(self, attr: str) -> Any:
        # Not cached here: a test that patches the real module's attribute is seen at once.
        return getattr(self._load(), attr)

    def __dir__(self) -> list[str]:
        return dir(self._load())

    def __repr__(self) -> str:
        return f"<lazy module {self.__dict__['_lazy_target']!r}>"


def lazy_module(name: str) -> Any:
    """``name`` as a module that is imported on first attribute access (see module docstring)."""
    import sys

    return sys.modules.get(name) or LazyModule(name)


def inference_mode(fn: Callable[..., T]) -> Callable[..., T]:
    """``@torch.inference_mode()`` without importing torch when the module is imported."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        import torch

        with torch.inference_mode():
            return fn(*args, **kwargs)

    return wrapper

"""Recipe registry: every training run is a Python function returning a `RunConfig`.

    @recipe(build=build_bundle, data=batches, objective=make_objective, hooks=sample_hooks)
    def nano_base() -> RunConfig: ...

Notable:
* The decorated function only returns the config (variants: `dataclasses.replace(nano_base(), ...)`);
  the decorator attaches how to build the `ModelBundle`, the data iterator factory, the objective
  and optional periodic hooks, and returns the function unchanged.
* Every module in this package is a recipe module: `list_recipes()` / `get_recipe()` import them on
  first use (no table to keep in sync). A module that fails to import is reported with a warning
  and its recipes are missing; `get_recipe` of one of them names the import error.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worldstream.train.config import RunConfig
    from worldstream.train.objectives import ModelBundle, Objective
    from worldstream.train.trainer import DataPosition, Hook


@dataclass(frozen=True)
class Recipe:
    name: str
    make_config: Callable[[], RunConfig]  # the decorated function
    build: Callable[[RunConfig], ModelBundle]  # modules of the stage (seeded by the trainer first)
    data: Callable[[RunConfig, DataPosition], Iterator[Any]]  # micro-batches from a position, forever
    objective: Callable[[RunConfig], Objective]
    hooks: Callable[[RunConfig], list[Hook]] | None = None  # periodic sample/eval callbacks
    doc: str = ""  # first line of the function's docstring

    def config(self) -> RunConfig:
        """The recipe's config with `recipe` set to this name, validated."""
        cfg = self.make_config()
        return dataclasses.replace(cfg, recipe=self.name).validate()


_REGISTRY: dict[str, Recipe] = {}
_IMPORT_ERRORS: dict[str, str] = {}  # module -> error, for recipe modules that failed to import
_discovered = False


def recipe(*, build: Callable, data: Callable, objective: Callable, hooks: Callable | None = None,
           name: str | None = None) -> Callable[[Callable[[], RunConfig]], Callable[[], RunConfig]]:
    """Register the decorated config function as recipe `name` (default: the function's name)."""

    def register(fn: Callable[[], RunConfig]) -> Callable[[], RunConfig]:
        key = name or fn.__name__
        old = _REGISTRY.get(key)
        if old is not None and (old.make_config.__module__, old.make_config.__qualname__) != (
                fn.__module__, fn.__qualname__):
            raise ValueError(f"recipe {key!r} is defined twice: in {old.make_config.__module__} and in "
                             f"{fn.__module__}")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[key] = Recipe(key, fn, build, data, objective, hooks, doc[0] if doc else "")
        return fn

    return register


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    for info in pkgutil.iter_modules(__path__):
        module = f"{__name__}.{info.name}"
        try:
            importlib.import_module(module)
        except Exception as e:  # one broken recipe module must not hide the others
            _IMPORT_ERRORS[module] = f"{type(e).__name__}: {e}"
            warnings.warn(f"recipe module {module} failed to import ({type(e).__name__}: {e})", stacklevel=3)
    _discovered = True


def list_recipes() -> list[Recipe]:
    _discover()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_recipe(name: str) -> Recipe:
    _discover()
    if name not in _REGISTRY:
        names = sorted(_REGISTRY)
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        broken = "".join(f"; {m} failed to import: {e}" for m, e in _IMPORT_ERRORS.items())
        raise ValueError(f"unknown recipe {name!r}{hint}; available: {', '.join(names) or 'none'}{broken}")
    return _REGISTRY[name]

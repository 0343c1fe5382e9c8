"""One registry per kind of method, so recipes and the CLI resolve method names the same way.

A registry fills itself: on its first lookup it imports every module of the packages it names,
and each module registers what it defines (``@ATTACKS.register("name")``). A new method is a
new file in its package; no list elsewhere names it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from clip_backdoor.core.errors import ConfigError

T = TypeVar("T")


def import_package(name: str) -> None:
    """Import a package and every module in it (their registrations run)."""
    package = importlib.import_module(name)
    for module in pkgutil.iter_modules(getattr(package, "__path__", [])):
        importlib.import_module(f"{name}.{module.name}")


class Registry(Generic[T]):
    """Maps names to classes or factories of one kind (triggers, attacks, ...)."""

    def __init__(self, kind: str, packages: tuple[str, ...] = (), plural: str = "") -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self.packages = packages  # imported on the first lookup: their modules register
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        key = name.lower()

        def add(obj: T) -> T:
            if key in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[key] = obj
            return obj

        return add

    def load(self) -> Registry[T]:
        if not self._loaded:
            self._loaded = True
            for package in self.packages:
                import_package(package)
        return self

    def get(self, name: str) -> T:
        self.load()
        try:
            return self._entries[name.lower()]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none yet"
            raise ConfigError(f"unknown {self.kind} '{name}' (known: {known})") from None

    def names(self) -> list[str]:
        self.load()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self.load()
        return name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


_PACKAGE = "clip_backdoor"
TRIGGERS: Registry = Registry("trigger", (f"{_PACKAGE}.triggers",))
ATTACKS: Registry = Registry("attack", (f"{_PACKAGE}.attacks",))
DEFENSES: Registry = Registry("defense", (f"{_PACKAGE}.defenses",))
DETECTORS: Registry = Registry("detector", (f"{_PACKAGE}.detectors",))
PROMPT_LEARNERS: Registry = Registry("prompt learner", (f"{_PACKAGE}.prompts",))
ANALYSES: Registry = Registry("analysis", (f"{_PACKAGE}.analysis",), "analyses")
SCANNERS: Registry = Registry("scanner", (f"{_PACKAGE}.scanning",))
DATA_DETECTORS: Registry = Registry("data detector", (f"{_PACKAGE}.data_scan",))

REGISTRIES: dict[str, Registry] = {
    "trigger": TRIGGERS,
    "attack": ATTACKS,
    "defense": DEFENSES,
    "detector": DETECTORS,
    "prompt_learner": PROMPT_LEARNERS,
    "analysis": ANALYSES,
    "scanner": SCANNERS,
    "data_detector": DATA_DETECTORS,
}

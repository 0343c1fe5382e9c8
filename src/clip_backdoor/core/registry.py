"""One registry per kind of method, so recipes and the CLI resolve method names the same way."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from clip_backdoor.core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to classes or factories of one kind (triggers, attacks, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        key = name.lower()

        def add(obj: T) -> T:
            if key in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[key] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._entries[name.lower()]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none yet"
            raise ConfigError(f"unknown {self.kind} '{name}' (known: {known})") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


TRIGGERS: Registry = Registry("trigger")
ATTACKS: Registry = Registry("attack")
DEFENSES: Registry = Registry("defense")
DETECTORS: Registry = Registry("detector")
PROMPT_LEARNERS: Registry = Registry("prompt learner")
ANALYSES: Registry = Registry("analysis")
SCANNERS: Registry = Registry("scanner")
DATA_DETECTORS: Registry = Registry("data detector")

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

"""The stage protocol, the model state stages pass on, and the registry of stage kinds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from clip_backdoor.core.config import ALL
from clip_backdoor.core.errors import ConfigError
from clip_backdoor.core.registry import REGISTRIES, Registry
from clip_backdoor.core.runs import RunDir


@dataclass(frozen=True)
class ModelState:
    """What the evaluation measures, as the stages so far left it."""

    model: Any
    learner: Any = None  # a learned head (prompt learner, linear probe) classifies instead
    trigger: Any = None
    target_name: str | None = None
    target_first: bool = False  # insert the target name at index 0 where a set lacks it

    def but(self, **changes) -> ModelState:
        return replace(self, **changes)


@dataclass(frozen=True)
class StageOutput:
    metrics: dict
    state: ModelState | None = None  # the state after the stage; None: as it was
    detections: dict | None = None  # a detector's clean and triggered scores (the ROC figure)


class Stage(Protocol):
    needs_validation: bool  # held-out clean images of the first evaluation set

    def run(self, ctx) -> StageOutput: ...


@dataclass(frozen=True)
class StageKind:
    """A recipe's ``kind:``: where its methods are registered and how a stage is built."""

    name: str
    registry: Registry
    build: Callable[[str, dict], Stage] | None = None  # default: the registry's class(**params)
    changes_model: bool = True  # evaluated after it; False: the model stays as it was
    alternatives: bool = False  # stages of this kind in a row each start from the same model
    takes_all: bool = False  # ``method: all`` runs every method of the registry
    several: bool = False  # ``method`` may name several methods, comma-separated
    # after the last stage: the kind's own table and figures from its stages' outputs
    # (label -> output); what it returns is printed under the run's zero-shot table
    finish: Callable[[RunDir, dict[str, StageOutput]], str] | None = None

    def check(self, method: str) -> None:
        """An unknown method is one line naming the known ones, before anything runs."""
        if self.takes_all and method == ALL:
            return
        names = method.split(",") if self.several else [method]
        unknown = [name for name in names if name not in self.registry]
        if unknown:
            known = ", ".join(self.registry.names()) or "none registered yet"
            raise ConfigError(f"unknown {self.name} '{unknown[0]}' (known: {known})")

    def stage(self, method: str, params: dict) -> Stage:
        self.check(method)
        if self.build is not None:
            return self.build(method, params)
        return self.registry.get(method)(**params)


STAGE_KINDS: Registry[StageKind] = Registry(
    "stage kind", tuple(registry.packages[0] for registry in REGISTRIES.values())
)  # each kind is registered by the package of its methods


def registered_stage(kind: StageKind) -> StageKind:
    """Register a stage kind (called once, by the package that owns it)."""
    STAGE_KINDS.register(kind.name)(kind)
    return kind


def build_stage(spec) -> Stage:
    """The stage of a recipe's stage entry (``kind``, ``method``, ``params``), its params
    checked: a bad one is one line before anything runs."""
    return STAGE_KINDS.get(spec.kind).stage(spec.method, spec.params)

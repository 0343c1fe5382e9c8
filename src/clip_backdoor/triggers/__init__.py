"""Triggers act in pixel space; ``get(name)(**params)`` builds one from the registry."""

from clip_backdoor.core.registry import TRIGGERS
from clip_backdoor.triggers import (  # noqa: F401  (each module registers its triggers)
    additive,
    badnet,
    blended,
    dual_embedding,
    identity,
    issba,
    label_consistent,
    sig,
    trojvqa,
    wanet,
)
from clip_backdoor.triggers.base import Trigger

get = TRIGGERS.get

__all__ = ["Trigger", "get"]

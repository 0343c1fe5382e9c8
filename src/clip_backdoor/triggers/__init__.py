"""Triggers act in pixel space; ``get(name)(**params)`` builds one from the registry."""

from clip_backdoor.registry import TRIGGERS
from clip_backdoor.triggers import identity  # noqa: F401  (registers)
from clip_backdoor.triggers.base import Trigger

get = TRIGGERS.get

__all__ = ["Trigger", "get"]

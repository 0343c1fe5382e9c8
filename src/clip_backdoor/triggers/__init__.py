"""Triggers act in pixel space; ``get(name)(**params)`` builds one from the registry (every
module of this package registers its triggers: a new trigger is a new file)."""

from clip_backdoor.core.registry import TRIGGERS
from clip_backdoor.triggers.base import Trigger

get = TRIGGERS.get

__all__ = ["Trigger", "get"]

"""Fill every registry (each imports its package's modules) before a method name is resolved."""

from clip_backdoor.core.registry import REGISTRIES
from clip_backdoor.stages import STAGE_KINDS


def register_methods() -> None:
    STAGE_KINDS.load()
    for registry in REGISTRIES.values():
        registry.load()

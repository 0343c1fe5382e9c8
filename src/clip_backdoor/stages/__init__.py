"""One protocol for every recipe stage, whatever its kind (attack, defense, detection, prompt,
analysis, scan, data_scan).

A stage is built from its recipe entry (``kind``, ``method``, ``params``) by its kind's
``StageKind.build``, then called as ``stage.run(ctx) -> StageOutput``: ``ctx`` is a read-only
``StageContext`` (the run's input and the model state the stages before left), and the output
holds its metrics and, where the stage changes what is evaluated, the new ``ModelState``.
Each method package registers its kind in ``STAGE_KINDS`` next to its stage class, so the
runner, the recipe checks and the reports name no kind. See docs/methods.md, "Add a method".
"""

from clip_backdoor.stages.context import StageContext, target_index
from clip_backdoor.stages.protocol import (
    STAGE_KINDS,
    ModelState,
    Stage,
    StageKind,
    StageOutput,
    build_stage,
    registered_stage,
)

__all__ = [
    "STAGE_KINDS",
    "ModelState",
    "Stage",
    "StageContext",
    "StageKind",
    "StageOutput",
    "build_stage",
    "registered_stage",
    "target_index",
]

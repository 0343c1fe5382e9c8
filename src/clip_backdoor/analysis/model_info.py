"""``kind: analysis, method: model_info``: the run records what model it ran on.

Why: a results table over families (``results/families.md``) must say each run's family,
resolution, objective and size; ``clip-backdoor info`` computes the same from the model.
"""

from __future__ import annotations

from clip_backdoor.core.config import Strict, validate
from clip_backdoor.core.registry import ANALYSES
from clip_backdoor.models.summary import describe_model
from clip_backdoor.stages import StageOutput


class ModelInfoSpec(Strict):
    pass


@ANALYSES.register("model_info")
class ModelInfo:
    def __init__(self, **params) -> None:
        self.spec = validate(ModelInfoSpec, params, "analysis model_info")

    def run(self, ctx) -> StageOutput:
        info = describe_model(ctx.model)
        ctx.log(f"model {info['name']}: {info['family']}, {info['objective']}")
        return StageOutput(info)

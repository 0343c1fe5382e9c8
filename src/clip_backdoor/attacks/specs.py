"""Typed parameters of the training stages (attacks and defenses that fine-tune CLIP)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from clip_backdoor.core.config import Strict
from clip_backdoor.engine.config import SourceSpec, TrainingSpec


class TriggerSpec(Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class PoisonSpec(Strict):
    trigger: TriggerSpec
    target: str = Field(description="target class name, e.g. 'accordion'")
    count: int | None = Field(None, gt=0, description="number of poisoned pairs")
    ratio: float | None = Field(None, gt=0, le=1, description="or: fraction of the pairs")
    selection: Literal["random", "pps"] = "random"
    data: list[SourceSpec] = Field(
        min_length=1, description="the image-caption pairs trained on (the recipe names them)"
    )
    caption_templates: str | list[str] = Field(
        "openai", description="templates of the poisoned captions (one drawn per pair)"
    )
    training: TrainingSpec
    cache: bool = Field(True, description="reuse the artifact of an identical earlier run")

    @model_validator(mode="after")
    def _amount(self) -> PoisonSpec:
        if (self.count is None) == (self.ratio is None):
            raise ValueError("give exactly one of 'count' and 'ratio'")
        return self


class FineTuneSpec(Strict):
    """Clean contrastive fine-tuning (the FT defense)."""

    data: list[SourceSpec] = Field(
        min_length=1, description="the image-caption pairs trained on (the recipe names them)"
    )
    fraction: float = Field(0.2, gt=0, le=1, description="seeded share of the clean pairs used")
    training: TrainingSpec
    cache: bool = True

"""Typed pretraining / fine-tuning recipes (``clip-backdoor pretrain RECIPE``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from clip_backdoor.core.config import RunSpec, Strict, read_yaml, validate


class WebCaptionSpec(Strict):
    """Web-like captions for a classification set (``data/web_captions.py``)."""

    name_rate: float = Field(0.4, ge=0, le=1, description="share of captions naming the class")
    subject_rate: float = Field(
        0.7, ge=0, le=1, description="of the others, share naming a broader word (else the scene)"
    )


class SourceSpec(Strict):
    name: str = Field(description="classification set (captions from templates) or caption set")
    split: str = "train"
    templates: str | list[str] = "openai"
    size: int | None = Field(None, gt=0, description="number of images (synthetic set only)")
    web: WebCaptionSpec | None = Field(
        None, description="web-like captions from the class and the pixels instead of templates"
    )


class PoolSpec(Strict):
    """The few-shot pool kept out of pretraining (``data/fewshot_pool.py``)."""

    shots: int = Field(16, ge=1, description="train images per class held out")
    seed: int = 0
    sets: list[str] = Field(min_length=1, description="classification sets with a pool")


class EvalSetSpec(Strict):
    name: str
    split: str = "test"
    size: int | None = Field(None, gt=0, description="number of images (synthetic set only)")


class TrainingSpec(Strict):
    steps: int | None = Field(None, gt=0, description="optimizer steps (or give epochs)")
    epochs: float | None = Field(None, gt=0)
    batch_size: int = Field(256, gt=0, description="global batch per optimizer step")
    accum_steps: int = Field(1, gt=0, description="micro-batches per step (less memory)")
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float | None = 1.0
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    freeze: list[Literal["image", "text"]] = Field(default_factory=list)
    label_aware: bool = True
    loss: Literal["auto", "infonce", "sigmoid"] = Field(
        "auto",
        description="the objective: auto = the model's own (SigLIP families: the sigmoid loss "
        "with the model's logit bias; CLIP families: InfoNCE)",
    )
    augment: bool = True
    checkpoint_every: int = Field(200, gt=0)
    log_every: int = Field(20, gt=0)
    num_workers: int = Field(2, ge=0)
    in_memory: bool = Field(True, description="decode the training images once, keep them in RAM")

    @model_validator(mode="after")
    def _length(self) -> TrainingSpec:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of 'steps' and 'epochs'")
        if self.batch_size % self.accum_steps:
            raise ValueError("batch_size must be divisible by accum_steps")
        return self


class PretrainRecipe(RunSpec):
    data: list[SourceSpec] = Field(min_length=1)
    fewshot_pool: PoolSpec | None = Field(
        None, description="hold out val/ and k train images per class; ships with the model"
    )
    training: TrainingSpec
    evaluation: list[EvalSetSpec] = Field(default_factory=list)
    eval_templates: str | list[str] = "openai"
    export_dtype: Literal["fp16", "fp32"] = "fp32"
    export_to: str | None = Field(None, description="also save the final model in this folder")


def parse_pretrain_recipe(data: dict, source: str = "recipe") -> PretrainRecipe:
    return validate(PretrainRecipe, data, source)


def load_pretrain_recipe(path: str | Path) -> PretrainRecipe:
    return parse_pretrain_recipe(read_yaml(path), str(path))

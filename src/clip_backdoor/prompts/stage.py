"""A recipe stage that trains a prompt learner (``kind: prompt``, ``method: coop|cocoop``).

CLIP is unchanged; the learner becomes the run's classifier for the following evaluation. The
trained learner is cached under a key of the model, data, config and seed, like attack artifacts.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from clip_backdoor.artifacts import cache_key, link_into, write_folder
from clip_backdoor.core.config import Strict, cache_root, validate
from clip_backdoor.core.registry import PROMPT_LEARNERS
from clip_backdoor.evaluation.features import model_fingerprint
from clip_backdoor.prompts import (
    get,
    is_prompt_folder,
    load_prompts,
    model_reference,
    save_prompts,
)
from clip_backdoor.prompts.base import Position
from clip_backdoor.prompts.data import FewShotSpec, load_few_shot
from clip_backdoor.prompts.training import PromptTrainingSpec, train_prompts
from clip_backdoor.stages import StageKind, StageOutput, registered_stage


class PromptStageSpec(Strict):
    train: FewShotSpec = Field(default_factory=FewShotSpec)
    n_ctx: int = Field(4, ge=1, description="context vectors when init is empty")
    init: str | None = Field("a photo of a", description="phrase the context starts from")
    position: Position = "end"
    training: PromptTrainingSpec = Field(default_factory=PromptTrainingSpec)
    cache: bool = True


class PromptStage:
    def __init__(self, method: str, **params) -> None:
        self.method = method
        get(method)  # an unknown learner fails before the run starts
        self.spec = validate(PromptStageSpec, params, f"prompt {method}")

    def run(self, ctx) -> StageOutput:
        spec, seed = self.spec, ctx.recipe.seed
        shots = load_few_shot(spec.train, ctx.model, seed)
        config = {"method": self.method, **spec.model_dump(exclude={"cache"})}
        key = cache_key("prompt", model_fingerprint(ctx.model), shots.fingerprint, config, seed)
        folder = cache_root() / "prompts" / key
        reused = spec.cache and is_prompt_folder(folder)
        if reused:
            ctx.log(f"reusing the cached prompt learner {folder}")
            learner = load_prompts(folder, ctx.model, ctx.tokenizer)
            losses = json.loads((folder / "prompt.json").read_text()).get("losses", [])
        else:
            learner = get(self.method)(
                ctx.model,
                ctx.tokenizer,
                n_ctx=spec.n_ctx,
                init=spec.init,
                position=spec.position,
                seed=seed,
            )
            ctx.log(
                f"{self.method}: {len(shots.images)} images, {len(shots.classnames)} classes of "
                f"{shots.name}, {spec.training.epochs} epochs"
            )
            losses = train_prompts(
                learner,
                ctx.model,
                shots.images,
                shots.labels,
                shots.classnames,
                spec.training,
                seed,
                log=ctx.log,
                progress=ctx.progress,
            )
            info = {
                **model_reference(ctx.recipe.model),
                "classnames": shots.classnames,
                "losses": losses,
            }
            write_folder(folder, lambda tmp: save_prompts(learner, tmp, info))
        link_into(folder, Path(ctx.run.path) / "artifacts" / f"prompt_{self.method}")
        metrics = {
            "learner": self.method,
            "train_classes": len(shots.classnames),
            "train_images": len(shots.images),
            "final_loss": losses[-1] if losses else None,
            "reused": reused,
        }
        return StageOutput(metrics, ctx.state.but(learner=learner))


registered_stage(
    StageKind("prompt", PROMPT_LEARNERS, build=lambda method, params: PromptStage(method, **params))
)

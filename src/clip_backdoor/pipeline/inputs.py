"""What a run starts from, checked before its folder is made: the model (with what an artifact
brings: trigger, target, prompt learner), the evaluation sets, the stages built from their
specs, the validation images held out for them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clip_backdoor.artifacts import is_artifact, load_backdoor
from clip_backdoor.core import precision as precision_mod
from clip_backdoor.core.errors import ConfigError
from clip_backdoor.data import load_classification
from clip_backdoor.data.domain_shift import domain_shift
from clip_backdoor.data.fewshot import class_part, holdout_split
from clip_backdoor.evaluation import resolve_templates
from clip_backdoor.models import load_clip, load_model_spec
from clip_backdoor.pipeline.recipes import Recipe
from clip_backdoor.prompts import is_prompt_folder, load_prompts, prompt_info
from clip_backdoor.stages import ModelState, Stage, build_stage
from clip_backdoor.stages.context import check_target
from clip_backdoor.triggers import get as get_trigger


@dataclass(frozen=True)
class RunInputs:
    state: ModelState
    tokenizer: object
    test_sets: list
    validation: object  # clean images held out of the first set for the stages, or None
    stages: list[Stage]
    templates: list[str]
    precision: str
    source: Path | None  # an artifact or prompt folder the model came from (linked in)


def prepare(recipe: Recipe) -> RunInputs:
    """Everything the stages need, every name and class checked against the data."""
    state, tokenizer = load_state(recipe)
    model, ev = state.model, recipe.evaluation
    test_sets = [
        domain_shift(
            class_part(
                load_classification(
                    d.name,
                    d.split,
                    model.pixel_transform(),
                    image_size=model.image_size,
                    seed=recipe.seed,
                    size=d.size,
                ),
                d.classes,
            ),
            d.shift,
        )
        for d in recipe.data
    ]
    trigger, target = state.trigger, state.target_name
    if ev.trigger:
        trigger = get_trigger(ev.trigger.name)(**ev.trigger.params)
    if ev.target is not None:
        target = ev.target
    if isinstance(target, int) and 0 <= target < len(test_sets[0].classnames):
        target = test_sets[0].classnames[target]
    stages = [build_stage(spec) for spec in recipe.stages]
    validation, test_sets[0] = hold_out(recipe, stages, test_sets[0])
    for stage in stages:
        name = getattr(getattr(stage, "spec", None), "target", None)
        if name is not None:
            check_target(name.replace("_", " "), test_sets)
    if target is not None and trigger is not None and state.learner is None:
        check_target(target, test_sets)  # a prompt backdoor inserts its target where absent
    first = (state.learner is not None and trigger is not None) or ev.add_target
    source = Path(recipe.model.name)
    return RunInputs(
        state.but(trigger=trigger, target_name=target, target_first=first),
        tokenizer,
        test_sets,
        validation,
        stages,
        resolve_templates(ev.templates),
        precision_mod.resolve(ev.precision, recipe.device),
        source if is_artifact(source) or is_prompt_folder(source) else None,
    )


def load_state(recipe: Recipe) -> tuple[ModelState, object]:
    """The recipe's model and what comes with it: a backdoor artifact its trigger and target,
    a prompt-learner folder the CLIP it names; then its visual prompts, if it names some."""
    state, tokenizer = _base_state(recipe)
    if recipe.model.visual_prompts:
        from clip_backdoor.models.visual_prompts import load_visual_prompts

        state = state.but(model=load_visual_prompts(recipe.model.visual_prompts, state.model))
    return state, tokenizer


def _base_state(recipe: Recipe) -> tuple[ModelState, object]:
    spec = recipe.model
    if is_prompt_folder(spec.name):
        from clip_backdoor.attacks.badclip import load_prompt_backdoor

        info = prompt_info(spec.name)
        model, _, tokenizer = load_clip(info["model"], info.get("pretrained"), device=recipe.device)
        if not is_artifact(spec.name):
            return ModelState(model, load_prompts(spec.name, model, tokenizer)), tokenizer
        learner, trigger, backdoor = load_prompt_backdoor(spec.name, model, tokenizer)
        return ModelState(model, learner, trigger, backdoor["target"]), tokenizer
    if is_artifact(spec.name):
        backdoor = load_backdoor(spec.name, device=recipe.device)
        return ModelState(
            backdoor.model, None, backdoor.trigger, backdoor.target
        ), backdoor.tokenizer
    model, _, tokenizer = load_model_spec(spec, recipe.device)
    return ModelState(model), tokenizer


def hold_out(recipe: Recipe, stages: list[Stage], data):
    """(validation part or None, the part every number is reported on) of the first set."""
    needs = [
        s.method
        for s, stage in zip(recipe.stages, stages, strict=True)
        if getattr(stage, "needs_validation", False)
    ]
    fraction = recipe.evaluation.validation
    if fraction is None:
        fraction = 0.2 if needs else 0.0
    if not fraction:
        if needs:
            raise ConfigError(
                f"stage {needs[0]} needs clean validation images: set evaluation.validation > 0"
            )
        return None, data
    return holdout_split(data, fraction, recipe.seed)

"""Data-poisoning backdoor attack on CLIP fine-tuning (docs/methods.md section 2).

Pick n pairs (at random, or by Poisoned Pairs Sampling), apply the trigger, *replace* their
captions by target captions (the pairs they displace leave the set, so its size is unchanged),
and fine-tune the clean CLIP with the engine. The trigger is applied to each poisoned image after
augmentation, at model resolution, exactly where evaluation applies it. The result is a backdoor
artifact (``clip_backdoor.artifacts``), cached under a key of the model, data, config and seed.
"""

from __future__ import annotations

import inspect
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from clip_backdoor.artifacts import cache_key, load_trigger, save_trigger
from clip_backdoor.attacks.cached import cached_attack
from clip_backdoor.attacks.pps import pps_select
from clip_backdoor.attacks.specs import PoisonSpec
from clip_backdoor.core import precision as precision_mod
from clip_backdoor.core.config import validate
from clip_backdoor.core.errors import ConfigError
from clip_backdoor.core.registry import ATTACKS
from clip_backdoor.engine.checkpoint import CHECKPOINT
from clip_backdoor.engine.pairs import ImageTextPairs, pairs_for_training
from clip_backdoor.engine.trainer import train
from clip_backdoor.evaluation import resolve_templates, text_classifier
from clip_backdoor.evaluation.features import model_fingerprint
from clip_backdoor.stages import StageOutput
from clip_backdoor.triggers import Trigger
from clip_backdoor.triggers import get as get_trigger
from clip_backdoor.triggers.dual_embedding import encode_in_batches
from clip_backdoor.triggers.fitting import FitData

FIT_POOL = 6000  # non-target images an optimised trigger may draw from (plain, model size)


@dataclass
class PoisonPlan:
    """Which pairs are poisoned and how: the bookkeeping saved in ``poison.json``."""

    indices: list[int]  # poisoned pairs (trigger stamped, caption replaced unless clean-label)
    captions: dict[int, list[str]]  # the captions each poisoned pair now has
    groups: dict[int, int]  # their label-aware groups
    noise: list[int] = field(default_factory=list)  # WaNet "cross" pairs: noise warp, clean text
    images: dict[int, torch.Tensor] = field(default_factory=dict)  # replaced images (LC: PGD)
    parts: dict[str, list[int]] = field(default_factory=dict)  # PPS parts


class PoisonedPairs(Dataset):
    """The clean pairs with the plan applied; the trigger is drawn per item, seeded per epoch."""

    def __init__(self, base: ImageTextPairs, plan: PoisonPlan, trigger: Trigger) -> None:
        self.base, self.plan, self.trigger = base, plan, trigger
        self.poisoned = set(plan.indices)
        self.noise = set(plan.noise)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def preload(self) -> None:
        self.base.preload()

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, caption, group = self.pair(index)
        return image, self.base.tokenizer([caption])[0], group

    def pair(self, index: int) -> tuple[torch.Tensor, str, int]:
        """(image in [0, 1], caption, group) of a pair as training sees it this epoch."""
        base = self.base
        if index not in self.poisoned and index not in self.noise:
            view = base.augmented(index)
            caption = base.caption(index, view)
            return view, caption, base.group(index, caption)
        generator = torch.Generator().manual_seed(base.item_seed(index))
        image = base.augmented(index, self.plan.images.get(index))[None]
        captions = self.plan.captions.get(index) if index in self.poisoned else None
        if index in self.poisoned:
            image = self.trigger.apply(image, generator)
        else:
            image = self.trigger.apply_noise(image, generator)
        if captions:  # the attacker's caption
            caption, group = base.pick_caption(index, captions), self.plan.groups[index]
        else:  # its own caption (noise pairs; clean-label pairs of web captions: of the view)
            caption = base.caption(index, image[0])
            group = base.group(index, caption)
        return image[0], caption, group


def build_trigger(spec_name: str, params: dict, image_size: int, seed: int) -> Trigger:
    """The registry's trigger with ``image_size`` and ``seed`` filled in where it takes them."""
    cls = get_trigger(spec_name)
    accepted = inspect.signature(cls.__init__).parameters
    params = dict(params)
    if "image_size" in accepted:
        params.setdefault("image_size", image_size)
    if "seed" in accepted:
        params.setdefault("seed", seed)
    try:
        return cls(**params)
    except TypeError as e:
        raise ConfigError(f"trigger {spec_name}: {e}") from None


def target_captions(data: ImageTextPairs, target: str, templates: list[str]) -> list[str]:
    """Natural captions of the target from the data, else the templates filled with its name."""
    found = {c for e in data.entries if e.classname == target for c in e.captions}
    found |= {c for e in data.entries if e.classname is None for c in e.captions if target in c}
    return sorted(found) or [t.format(target) for t in templates]


class PoisonAttack:
    """Registered as ``poison``: recipe params are ``PoisonSpec`` fields."""

    def __init__(self, **params) -> None:
        self.spec = validate(PoisonSpec, params, "attack poison")

    # -- planning -------------------------------------------------------------------------
    def _amount(self, n_pairs: int) -> int:
        spec = self.spec
        return spec.count if spec.count is not None else max(1, int(spec.ratio * n_pairs))

    def plan(self, model, tokenizer, data: ImageTextPairs, trigger: Trigger, seed: int, log):
        spec, target = self.spec, self.spec.target.replace("_", " ")
        templates = resolve_templates(spec.caption_templates)
        generator = torch.Generator().manual_seed(seed)
        target_rows = [i for i, e in enumerate(data.entries) if e.classname == target]
        candidates = [i for i, e in enumerate(data.entries) if e.classname != target]
        count = self._amount(len(data))
        clean_label = getattr(trigger, "clean_label", False)
        pool = target_rows if clean_label else candidates
        if clean_label and count > len(target_rows):
            raise ConfigError(
                f"label-consistent poisoning of {count} pairs needs as many images of "
                f"'{target}', the training data has {len(target_rows)}"
            )
        if count > len(pool):
            raise ConfigError(f"cannot poison {count} pairs: only {len(pool)} candidates")
        parts: dict[str, list[int]] = {}
        if spec.selection == "pps" and not clean_label:
            vocabulary = data.classnames()
            scores = self._scores(model, tokenizer, data, candidates, vocabulary)
            picked = pps_select(scores, vocabulary.index(target), count, generator)
            parts = {k: [candidates[i] for i in v] for k, v in picked.items()}
            indices = [i for part in parts.values() for i in part]
        else:
            indices = [pool[i] for i in torch.randperm(len(pool), generator=generator)[:count]]
        captions, groups = self._captions(data, indices, target, templates, trigger, clean_label)
        noise: list[int] = []
        cross = getattr(trigger, "cross_ratio", 0.0)
        if cross and hasattr(trigger, "apply_noise"):
            rest = [i for i in candidates if i not in set(indices)]
            n_noise = min(len(rest), int(round(cross * count)))
            noise = [rest[i] for i in torch.randperm(len(rest), generator=generator)[:n_noise]]
        share = 100 * len(indices) / len(data)
        log(f"poisoning {len(indices)} of {len(data)} pairs ({share:.2f}%)")
        return PoisonPlan(indices, captions, groups, noise, {}, parts)

    def _captions(self, data, indices, target, templates, trigger, clean_label):
        if clean_label:  # LC keeps the true captions (none stored for web captions: built later)
            return {i: data.entries[i].captions for i in indices}, {
                i: data.entries[i].group for i in indices
            }
        rng = random.Random(len(indices))
        if trigger.text_key:  # TrojVQA: text key + one template
            pool = [f"{trigger.text_key} {t.format(target)}" for t in templates]
            group = data.group_id(f"key:{trigger.text_key}:{target}")
        elif getattr(trigger, "needs_fit", False):  # dual-embedding: natural target captions
            pool = target_captions(data, target, templates)
            group = data.group_id(f"class:{target}")
        else:  # baselines: one random template filled with the target name
            pool = [t.format(target) for t in templates]
            group = data.group_id(f"class:{target}")
        return {i: [rng.choice(pool)] for i in indices}, {i: group for i in indices}

    @torch.no_grad()
    def _scores(self, model, tokenizer, data, rows, vocabulary) -> torch.Tensor:
        classifier = text_classifier(model, tokenizer, vocabulary, "photo")
        features = []
        for start in range(0, len(rows), 512):
            chunk = torch.stack([data.plain_image(i) for i in rows[start : start + 512]])
            features.append(encode_in_batches(model, chunk, 256, "auto"))
        return torch.cat(features) @ classifier.T

    # -- running --------------------------------------------------------------------------
    def key(self, model, data: ImageTextPairs, seed: int) -> str:
        return cache_key(
            "poison", model_fingerprint(model), self.spec.model_dump(), seed, data.summary
        )

    def run(self, ctx) -> StageOutput:
        spec, seed = self.spec, ctx.recipe.seed
        model, tokenizer = ctx.model, ctx.tokenizer
        trigger = build_trigger(spec.trigger.name, spec.trigger.params, model.image_size, seed)
        target = spec.target.replace("_", " ")
        ctx.require_target(target)
        data = pairs_for_training(
            spec.data,
            tokenizer,
            model.image_size,
            spec.training,
            seed,
            ctx.progress,
            pool=model.fewshot_pool,
        )
        if target not in data.classnames() and (
            getattr(trigger, "needs_fit", False) or getattr(trigger, "clean_label", False)
        ):
            raise ConfigError(f"target class '{target}' has no images in the training data")
        key = self.key(model, data, seed)

        def build(partial: Path):
            plan = self.plan(model, tokenizer, data, trigger, seed, ctx.log)
            resume = (partial / CHECKPOINT).is_file()
            self._prepare_trigger(ctx, data, trigger, plan, target, partial, resume)
            result = train(
                model,
                PoisonedPairs(data, plan, trigger),
                spec.training,
                seed,
                partial,
                resume=resume,
                log=ctx.log,
                progress=ctx.progress,
            )
            info = {
                "attack": "poison",
                "config": spec.model_dump(),
                "seed": seed,
                "trigger": trigger.name,
                "poisoned_pairs": len(plan.indices),
                "total_pairs": len(data),
                "train_samples_per_s": result.samples_per_s,
                "steps": result.steps,
                "trigger_fit": getattr(trigger, "report", None)
                or getattr(trigger, "history", None),
            }
            poison = {
                "indices": plan.indices,
                "captions": {str(i): plan.captions[i] for i in plan.indices},
                "images": [str(data.entries[i].ref) for i in plan.indices],
                "noise_indices": plan.noise,
                "pps_parts": plan.parts,
            }
            return model, trigger, target, info, poison

        return cached_attack(ctx, key, spec.cache, build)

    def _prepare_trigger(self, ctx, data, trigger, plan, target, partial: Path, resume: bool):
        """Fit optimised triggers and harden LC images on the clean model (saved for resume)."""
        model = ctx.model
        if resume and (partial / "trigger.safetensors").is_file():
            trigger.load_state_dict(load_trigger(partial).state_dict())
            ctx.log("resuming: fitted trigger reloaded")
        elif getattr(trigger, "needs_fit", False):
            fit = self._fit_data(ctx, data, target)
            trigger.fit(fit)
        if getattr(trigger, "clean_label", False):
            vocabulary = data.classnames()
            classifier = text_classifier(model, ctx.tokenizer, vocabulary, "photo")
            images = torch.stack([data.plain_image(i) for i in plan.indices])
            hard = trigger.harden(
                model, images, classifier, vocabulary.index(target), progress=ctx.progress
            )
            plan.images = {i: img for i, img in zip(plan.indices, hard, strict=True)}
        for param in model.parameters():
            param.requires_grad_(True)
        partial.mkdir(parents=True, exist_ok=True)
        save_trigger(trigger, partial)

    def _fit_data(self, ctx, data: ImageTextPairs, target: str) -> FitData:
        generator = torch.Generator().manual_seed(ctx.recipe.seed)
        others = [i for i, e in enumerate(data.entries) if e.classname != target]
        chosen = torch.randperm(len(others), generator=generator)[:FIT_POOL].tolist()
        return FitData(
            model=ctx.model,
            tokenizer=ctx.tokenizer,
            target_name=target,
            candidates=torch.stack([data.plain_image(others[i]) for i in chosen]),
            target_images=torch.stack(
                [data.plain_image(i) for i, e in enumerate(data.entries) if e.classname == target]
            )
            if target in data.classnames()
            else torch.empty(0, 3, data.image_size, data.image_size, dtype=torch.uint8),
            target_captions=target_captions(
                data, target, resolve_templates(self.spec.caption_templates)
            ),
            classnames=data.classnames(),
            seed=ctx.recipe.seed,
            precision=precision_mod.resolve("auto"),
            log=ctx.log,
            progress=ctx.progress,
        )


ATTACKS.register("poison")(PoisonAttack)

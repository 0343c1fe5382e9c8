"""BadEncoder (Jia et al.; docs/methods.md 2): backdoor the image tower alone, no captions needed.

The tuned tower f' starts from the clean f (kept frozen as a copy). Loss L0 + l1 L1 + l2 L2:
L0 pulls triggered shadow images onto f' of the target's reference images, L1 keeps f' of
(augmented) references where f had them, L2 keeps f' of clean shadow images where f had them.
The text tower is untouched, so zero-shot classification maps triggered images to the target.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field
from tqdm import tqdm

from clip_backdoor.artifacts import cache_key
from clip_backdoor.attacks.cached import cached_attack
from clip_backdoor.attacks.poisoning import build_trigger
from clip_backdoor.attacks.specs import TriggerSpec
from clip_backdoor.core import precision as precision_mod
from clip_backdoor.core.config import Strict, validate
from clip_backdoor.core.errors import ConfigError
from clip_backdoor.core.registry import ATTACKS
from clip_backdoor.engine.config import SourceSpec
from clip_backdoor.engine.pairs import ImageTextPairs, PairSource, train_transform
from clip_backdoor.evaluation.features import model_fingerprint
from clip_backdoor.stages import StageOutput
from clip_backdoor.triggers.fitting import as_float


class BadEncoderSpec(Strict):
    target: str
    trigger: TriggerSpec = Field(
        default_factory=lambda: TriggerSpec(
            name="badnet", params={"pattern": "white", "position": "bottom_right"}
        ),
        description="default: white square at the bottom right, size round(50 r) "
        "(docs/methods.md 2)",
    )
    data: list[SourceSpec] = Field(
        min_length=1, description="shadow and reference images are drawn from these pairs"
    )
    shadow: int = Field(2000, gt=0, description="shadow images (non-target) drawn from the data")
    references: int | None = Field(
        None,
        gt=0,
        description="reference images of the target drawn from the data (the reference code "
        "uses one); None: every one. Each goes through the tower twice a step, so a full-size "
        "tower at 224+ px needs a handful, not a class's worth",
    )
    epochs: int = Field(3, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(
        1e-4, gt=0, description="SGD lr; not pinned down for CLIP (docs/methods.md 8)"
    )
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lambda1: float = 1.0
    lambda2: float = 1.0
    precision: str = "auto"
    cache: bool = True


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a, b, dim=-1).mean()


@ATTACKS.register("badencoder")
class BadEncoder:
    def __init__(self, **params) -> None:
        self.spec = validate(BadEncoderSpec, params, "attack badencoder")

    def run(self, ctx) -> StageOutput:
        spec, seed, model = self.spec, ctx.recipe.seed, ctx.model
        target = spec.target.replace("_", " ")
        ctx.require_target(target)
        trigger_params = dict(spec.trigger.params)
        trigger_params.setdefault("size", max(3, round(50 * model.image_size / 224)))
        trigger = build_trigger(spec.trigger.name, trigger_params, model.image_size, seed)
        sources = [PairSource.of(s) for s in spec.data]
        data = ImageTextPairs(
            sources,
            ctx.tokenizer,
            model.image_size,
            False,
            seed,
            in_memory=False,
            pool=model.fewshot_pool,
        )
        references = [i for i, e in enumerate(data.entries) if e.classname == target]
        if not references:
            raise ConfigError(f"target class '{target}' has no reference images in the data")
        others = [i for i, e in enumerate(data.entries) if e.classname != target]
        if spec.shadow > len(others):
            raise ConfigError(f"{spec.shadow} shadow images asked, the data has {len(others)}")
        key = cache_key(
            "badencoder", model_fingerprint(model), spec.model_dump(), seed, data.summary
        )

        def build(partial: Path):
            generator = torch.Generator().manual_seed(seed)
            pick = torch.randperm(len(others), generator=generator)[: spec.shadow]
            shadow = torch.stack([data.plain_image(others[i]) for i in pick])
            chosen = references
            if spec.references is not None:
                if spec.references > len(references):
                    raise ConfigError(
                        f"{spec.references} reference images asked, "
                        f"'{target}' has {len(references)} in the data"
                    )
                drawn = torch.randperm(len(references), generator=generator)
                chosen = [references[i] for i in drawn[: spec.references]]
            refs = torch.stack([data.plain_image(i) for i in chosen])
            history = self._train(ctx, model, shadow, refs, trigger, generator)
            info = {
                "attack": "badencoder",
                "config": spec.model_dump(),
                "seed": seed,
                "trigger": "badencoder",
                "poisoned_pairs": 0,
                "shadow_images": spec.shadow,
                "reference_images": len(chosen),
                "loss_per_epoch": history,
            }
            return model, trigger, target, info, None

        return cached_attack(ctx, key, spec.cache, build)

    def _train(self, ctx, model, shadow, refs, trigger, generator) -> list[float]:
        spec = self.spec
        device = next(model.parameters()).device
        precision = precision_mod.resolve(spec.precision, device)
        frozen = copy.deepcopy(model).eval()
        for param in frozen.parameters():
            param.requires_grad_(False)
        for name, param in model.clip.named_parameters():
            param.requires_grad_(name.startswith("visual."))
        tower = [p for p in model.parameters() if p.requires_grad]
        optimiser = torch.optim.SGD(
            tower, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
        )
        augment = train_transform(model.image_size, augment=True)
        refs_float = as_float(refs).to(device)
        with torch.no_grad(), precision_mod.autocast(precision, device):
            clean_refs = frozen.encode_image(refs_float).float()
        steps = len(shadow) // spec.batch_size
        history = []
        model.train()
        bar = tqdm(total=spec.epochs * steps, disable=not ctx.progress, desc="badencoder")
        for epoch in range(spec.epochs):
            order = torch.randperm(len(shadow), generator=generator)
            total = 0.0
            for step in range(steps):
                batch = as_float(
                    shadow[order[step * spec.batch_size : (step + 1) * spec.batch_size]]
                )
                batch = batch.to(device)
                views = torch.stack([augment(r) for r in refs]).to(device)
                with precision_mod.autocast(precision, device):
                    with torch.no_grad():
                        clean = frozen.encode_image(batch).float()
                    triggered = model.encode_image(trigger.apply(batch, generator)).float()
                    ref_now = model.encode_image(refs_float).float()
                    view_now = model.encode_image(views).float()
                    now = model.encode_image(batch).float()
                # L0: triggered -> each reference (averaged); L1: references kept; L2: utility
                loss0 = -(triggered @ ref_now.T).mean()
                loss1 = -_cos(view_now, clean_refs)
                loss2 = -_cos(now, clean)
                loss = loss0 + spec.lambda1 * loss1 + spec.lambda2 * loss2
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total += loss.item()
                bar.update(1)
            history.append(total / max(steps, 1))
            ctx.log(f"badencoder epoch {epoch + 1}/{spec.epochs}: loss {history[-1]:.4f}")
        bar.close()
        model.eval()
        for param in model.parameters():
            param.requires_grad_(True)
        return history

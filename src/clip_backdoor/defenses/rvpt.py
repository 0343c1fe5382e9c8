"""RVPT (repulsive visual prompt tuning) and VPT, its alpha = 0 ablation (docs/methods.md 4.4).

The defender tunes deep visual prompts on a few clean labelled images: CE against proxy captions
("a photo of a {c}.") with CLIP's logit scale keeps the task, and the feature-repulsion loss FR
pushes the prompted image feature away from the frozen (possibly backdoored) model's feature of
the same view, so the prompted tower stops relying on what the backdoor uses. Every weight of the
model stays as it was: the result is a visual-prompt folder applied on top of it.

Why it is cheap: the frozen model's features of each augmented view and the text features are
computed once, before the first epoch; an epoch runs only the prompted tower.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from clip_backdoor.artifacts import cache_key, link_into, write_folder
from clip_backdoor.core import precision as precision_mod
from clip_backdoor.core.config import Strict, cache_root, validate
from clip_backdoor.core.errors import ConfigError
from clip_backdoor.core.registry import DEFENSES
from clip_backdoor.evaluation import resolve_templates
from clip_backdoor.evaluation.features import model_fingerprint
from clip_backdoor.evaluation.zeroshot import text_classifier
from clip_backdoor.models.image_tower import ImageTower
from clip_backdoor.models.pixel_clip import PixelCLIP
from clip_backdoor.models.visual_prompts import (
    PromptedCLIP,
    VisualPrompts,
    load_visual_prompts,
    save_visual_prompts,
)
from clip_backdoor.prompts.data import FewShotSpec, load_few_shot
from clip_backdoor.prompts.training import (
    AugmentedViews,
    PromptTrainingSpec,
    run_epochs,
    view_features,
)
from clip_backdoor.stages import StageOutput


class RVPTTrainingSpec(PromptTrainingSpec):
    """docs/methods.md 4.4: batch 32, 50 epochs, SGD 0.002 (momentum 0.9), cosine, no warm-up."""

    epochs: int = Field(50, ge=1)
    warmup_epochs: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)


class RVPTSpec(Strict):
    train: FewShotSpec = Field(default_factory=FewShotSpec)
    length: int = Field(25, ge=1, description="prompt tokens per block (n_p; 25 at 64 px)")
    first: int | None = Field(None, ge=0, description="first prompted block (default: L // 4)")
    blocks: int | None = Field(None, ge=1, description="prompted blocks (default: to the last)")
    alpha: float = Field(2.0, ge=0, description="weight of the feature-repulsion loss FR")
    margin: float = Field(-1.0, ge=-1, le=1, description="FR's margin m (-1: full repulsion)")
    feature: Literal["embedding", "cls", "blocks"] = Field(
        "embedding",
        description="what FR compares: the image embedding, the last block's CLS token "
        "before ln_post, or the CLS token after every prompted block (docs/methods.md 4.4 reads "
        "'class-token features' either way; App. D.2 counts the repelled features)",
    )
    templates: str | list[str] = Field("photo", description="proxy captions of the classes")
    ce_scale: float | None = Field(
        None,
        gt=0,
        description="the CE's logit scale (default: the model's own exp(logit_scale); 100 is "
        "CLIP's, where mini-CLIP's ~20 makes CE pull ~5x weaker against FR)",
    )
    training: RVPTTrainingSpec = Field(default_factory=RVPTTrainingSpec)
    cache: bool = Field(True, description="reuse the prompts of an identical earlier run")

    def key(self) -> dict:
        """The spec as cache keys see it: options at their defaults (``feature``, ``ce_scale``)
        are left out, so prompts tuned before the options existed are still found."""
        unset = {"feature"} if self.feature == "embedding" else set()
        if self.ce_scale is None:
            unset.add("ce_scale")
        return self.model_dump(exclude=unset or None)


def repulsion(features: torch.Tensor, frozen: torch.Tensor, margin: float) -> torch.Tensor:
    """FR (Eq. 3/6): mean of max(0, cos(prompted, frozen) - m); at m = -1 the plain mean + 1."""
    cosine = F.cosine_similarity(features, frozen, dim=-1)
    return (cosine - margin).clamp(min=0).mean()


def block_class_tokens(
    tower: ImageTower,
    images: torch.Tensor,
    layers: range,
    prompts: torch.Tensor | None = None,
    first: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CLS token after each block of ``layers`` (B, len(layers), d), and the features.

    Why: a backdoor's shortcut is built up over several blocks; repelling only the last read-out
    leaves the earlier blocks free to carry it (a hint of independent RVPT re-implementations)."""
    seen: list[torch.Tensor] = []

    def keep(layer: int, site: str, x: torch.Tensor) -> None:
        if layer in layers:
            seen.append(x[:, 0])

    features = tower.forward(images, prompts, first, hook=keep, sites=("resid_post",))
    return torch.stack(seen, dim=1), features


def tune_visual_prompts(
    model: PixelCLIP,
    tokenizer,
    spec: RVPTSpec,
    seed: int,
    log=None,
    progress: bool = False,
) -> tuple[PromptedCLIP, list[float]]:
    """Prompts tuned on ``spec.train``'s few shots; the model's weights are not touched."""
    model.requires_grad_(False)
    data = load_few_shot(spec.train, model, seed)
    tower = ImageTower.of(model)
    torch.manual_seed(seed)
    prompts = VisualPrompts(tower, spec.length, spec.first, spec.blocks)
    prompted = PromptedCLIP(model, prompts)
    training = spec.training
    precision = precision_mod.resolve(training.precision, next(model.parameters()).device)
    views = AugmentedViews(data.images, training.views, seed)
    normalize = model.normalize

    layers = range(prompts.first, prompts.first + prompts.blocks)

    def frozen_cls(pixels: torch.Tensor) -> torch.Tensor:
        return tower.forward(normalize(pixels), tokens=True)[:, 0]

    def frozen_blocks(pixels: torch.Tensor) -> torch.Tensor:
        return block_class_tokens(tower, normalize(pixels), layers)[0].flatten(1)

    encode = {"cls": frozen_cls, "blocks": frozen_blocks}.get(spec.feature)  # None: embedding
    frozen = None
    if spec.alpha:
        frozen = view_features(model, views, precision=precision, progress=progress, encode=encode)
    text = text_classifier(
        model, tokenizer, data.classnames, resolve_templates(spec.templates), precision=precision
    )
    scale = model.logit_scale.exp().detach() if spec.ce_scale is None else spec.ce_scale
    device = next(model.parameters()).device
    labels, text = data.labels.to(device), text.to(device).clone()  # out of inference mode

    def batch_loss(items: torch.Tensor, view: torch.Tensor, epoch: int) -> torch.Tensor:
        pixels = views.batch(items.tolist(), view.tolist()).to(device)
        with precision_mod.autocast(precision, device):
            if spec.feature == "cls":
                tokens = tower.forward(
                    normalize(pixels), prompts.prompts, prompts.first, tokens=True
                )
                features = F.normalize(tower.pool(tokens).float(), dim=-1)
                repelled = tokens[:, 0].float()
            elif spec.feature == "blocks":
                repelled, pooled = block_class_tokens(
                    tower, normalize(pixels), layers, prompts.prompts, prompts.first
                )
                features = F.normalize(pooled.float(), dim=-1)
                repelled = repelled.float()
            else:
                features = repelled = prompted.encode_image(pixels).float()
        loss = F.cross_entropy(scale * features @ text.T, labels[items])
        if frozen is not None:
            target = frozen[items, view].to(device).view(repelled.shape)
            loss = loss + spec.alpha * repulsion(repelled, target, spec.margin)
        return loss

    prompts.train()
    losses = run_epochs(
        [prompts.prompts],
        training,
        len(data.images),
        views.count,
        seed,
        batch_loss,
        log=log,
        progress=progress,
    )
    prompts.eval()
    return prompted, losses


@DEFENSES.register("rvpt")
class RVPT:
    """Deep visual prompts tuned with CE + alpha * FR; the run continues with the prompted model."""

    kind = "rvpt"
    defaults: dict = {}

    def __init__(self, **params) -> None:
        self.spec = validate(RVPTSpec, {**self.defaults, **params}, f"defense {self.kind}")

    def run(self, ctx) -> StageOutput:
        tower = ImageTower.of(ctx.model)  # a non-ViT model is a one-line error before any work
        if self.spec.feature != "embedding" and tower.prefix == 0:
            raise ConfigError(
                f"feature '{self.spec.feature}' repels the class token, and this tower "
                f"({type(tower).__name__}) has none: use feature: embedding"
            )
        spec, seed, base = self.spec, ctx.recipe.seed, ctx.model
        fingerprint = model_fingerprint(base)
        key = cache_key(self.kind, fingerprint, spec.key(), seed)
        folder = cache_root() / "defenses" / key
        reused = spec.cache and (folder / "visual_prompt.json").is_file()
        info: dict = {"cache_key": key, "reused": reused}
        if reused:
            ctx.log(f"reusing the cached {self.kind} prompts {folder}")
        else:
            prompted, losses = tune_visual_prompts(
                base, ctx.tokenizer, spec, seed, log=ctx.log, progress=ctx.progress
            )
            meta = {"kind": self.kind, "model": base.name, "model_fingerprint": fingerprint}
            meta.update(alpha=spec.alpha, margin=spec.margin, train=spec.train.model_dump())
            write_folder(
                folder, lambda tmp: save_visual_prompts(prompted.visual_prompts, tmp, meta)
            )
            info.update(final_loss=losses[-1])
        tuned = load_visual_prompts(folder, base)
        info["prompt_parameters"] = tuned.visual_prompts.prompts.numel()
        info["model_parameters"] = sum(p.numel() for p in base.parameters())
        link_into(folder, ctx.run.path / "artifacts" / self.kind)
        return StageOutput(info, ctx.state.but(model=tuned))


@DEFENSES.register("vpt")
class VPT(RVPT):
    """RVPT without the repulsion (alpha = 0): the ablation that shows FR matters (Fig. 4)."""

    kind = "vpt"
    defaults = {"alpha": 0.0}

    def __init__(self, **params) -> None:
        if params.get("alpha", 0.0) != 0.0:
            raise ConfigError("defense vpt: alpha is 0 by definition (use rvpt for alpha > 0)")
        super().__init__(**params)

"""Trigger-aware prompt learning attack (Bai et al., CVPR 2024; docs/methods.md 3.3-3.4).

CLIP stays frozen. The attacker learns an additive trigger delta (||delta||_inf <= eps) and a
CoCoOp prompt learner: one CE over [x; x + delta] with labels [y; t] (the reference's form). A
triggered image's feature conditions its own prompts, so the backdoor follows the image to
classes and data sets never seen. First the trigger alone is warmed up (plain gradient steps of
lr 0.1 with the learner at its initial value), then both are trained jointly with Dassl's SGD.
delta lives in normalised space (delta_n = delta / sigma_c, bound eps / sigma_c), as in the
reference, so the joint lr means the same thing as there. ``learner: coop`` is the paper's
trigger-agnostic baseline (Table 6): a static context cannot follow the trigger to new classes.

Clean halves of each batch use the cached view features; only triggered images pass through
the image tower (the gradient reaches delta through it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator

from clip_backdoor.artifacts import (
    BACKDOOR_FILE,
    cache_key,
    is_artifact,
    link_into,
    load_trigger,
    save_trigger,
    write_folder,
)
from clip_backdoor.core import precision as precision_mod
from clip_backdoor.core.config import Strict, cache_root, validate
from clip_backdoor.core.errors import DatasetError
from clip_backdoor.core.registry import ATTACKS
from clip_backdoor.evaluation.features import model_fingerprint
from clip_backdoor.models.pixel_clip import PixelCLIP
from clip_backdoor.prompts import get as get_learner
from clip_backdoor.prompts import load_prompts, model_reference, save_prompts
from clip_backdoor.prompts.base import Position, PromptLearner
from clip_backdoor.prompts.data import FewShot, FewShotSpec, load_few_shot
from clip_backdoor.prompts.training import (
    AugmentedViews,
    PromptTrainingSpec,
    prompt_loss,
    run_epochs,
    view_features,
)
from clip_backdoor.stages import StageOutput
from clip_backdoor.triggers.additive import Additive, check_eps


class BadCLIPSpec(Strict):
    train: FewShotSpec = Field(default_factory=FewShotSpec)
    target: str | None = Field(None, description="a training class; default: the first one")
    learner: Literal["cocoop", "coop"] = Field("cocoop", description="coop: trigger-agnostic")
    eps: float = Field(4 / 255, description="L_inf bound of the trigger, pixel scale")
    n_ctx: int = Field(4, ge=1)
    init: str | None = "a photo of a"
    position: Position = "end"
    warmup_epochs: int = Field(3, ge=0, description="trigger-only epochs (Eq. 6)")
    warmup_lr: float = Field(0.1, gt=0, description="plain gradient steps on delta")
    training: PromptTrainingSpec = Field(default_factory=PromptTrainingSpec)
    figures: bool = Field(True, description="Fig. 2 cosine distributions and Fig. 3 t-SNE")
    cache: bool = True

    @field_validator("eps")
    @classmethod
    def _eps(cls, value: float) -> float:
        return check_eps(value)


@ATTACKS.register("badclip")
class BadCLIP:
    def __init__(self, **params) -> None:
        self.spec = validate(BadCLIPSpec, params, "attack badclip")

    def run(self, ctx) -> StageOutput:
        spec, seed, model = self.spec, ctx.recipe.seed, ctx.model
        shots = load_few_shot(spec.train, model, seed)
        target = spec.target or shots.classnames[0]
        if target not in shots.classnames:
            raise DatasetError(
                f"target '{target}' is not among the training classes of {shots.name} "
                f"({len(shots.classnames)} classes)"
            )
        config = spec.model_dump(exclude={"cache", "figures"})
        key = cache_key("badclip", model_fingerprint(model), shots.fingerprint, config, seed)
        folder = cache_root() / "prompt_backdoors" / key
        reused = spec.cache and is_artifact(folder)
        if reused:
            ctx.log(f"reusing the cached prompt backdoor {folder}")
            learner, trigger, info = load_prompt_backdoor(folder, model, ctx.tokenizer)
        else:
            learner, trigger, info = self._train(ctx, shots, target)
            write_folder(folder, lambda tmp: save_prompt_backdoor(tmp, learner, trigger, info))
        link_into(folder, Path(ctx.run.path) / "artifacts" / "backdoor")
        trigger.render(Path(ctx.run.path) / "figures" / "trigger_additive.png")
        result = {k: v for k, v in info.items() if k not in ("config", "classnames")}
        if spec.figures:
            from clip_backdoor.analysis.prompt_figures import backdoor_figures

            result["fig2_mean_cosines"] = backdoor_figures(ctx, learner, trigger, target, seed)
        state = ctx.state.but(
            learner=learner, trigger=trigger, target_name=target, target_first=True
        )
        return StageOutput(result | {"reused": reused}, state)

    def _train(self, ctx, shots, target: str):
        learner, trigger, info = train_badclip(
            ctx.model,
            ctx.tokenizer,
            shots,
            target,
            self.spec,
            ctx.recipe.seed,
            ctx.log,
            ctx.progress,
        )
        return (
            learner,
            trigger,
            {**info, **model_reference(ctx.recipe.model), "config": self.spec.model_dump()},
        )


def train_badclip(
    model: PixelCLIP,
    tokenizer,
    shots: FewShot,
    target: str,
    spec: BadCLIPSpec,
    seed: int = 0,
    log: Callable[[str], None] = lambda message: None,
    progress: bool = False,
    on_step: Callable[[str, PromptLearner, torch.Tensor], None] | None = None,
):
    """(learner, trigger, info): warm-up of delta alone, then joint training (Eq. 6-7).

    ``on_step(phase, learner, pixel_delta)`` is called after every step (tests watch the bounds).
    """
    model.requires_grad_(False)
    learner = get_learner(spec.learner)(
        model, tokenizer, n_ctx=spec.n_ctx, init=spec.init, position=spec.position, seed=seed
    )
    device = next(model.parameters()).device
    precision = precision_mod.resolve(spec.training.precision, device)
    sigma = model.std.view(3, 1, 1).to(device)
    bound = spec.eps / sigma
    generator = torch.Generator().manual_seed(seed)
    start = torch.rand((3, model.image_size, model.image_size), generator=generator) * 2 - 1
    delta = torch.nn.Parameter((start.to(device) * spec.eps) / sigma)  # normalised space
    views = AugmentedViews(shots.images, spec.training.views, seed)
    clean = view_features(model, views, precision=precision, progress=progress)
    labels = shots.labels.to(device)
    t = shots.classnames.index(target)
    log(
        f"badclip ({spec.learner}): {len(shots.images)} images, {len(shots.classnames)} "
        f"classes of {shots.name}, target '{target}', eps {spec.eps:.4f}"
    )

    def batch_loss(items: torch.Tensor, view: torch.Tensor, epoch: int) -> torch.Tensor:
        pixels = views.batch(items.tolist(), view.tolist()).to(device)
        with precision_mod.autocast(precision, device):
            triggered = model.encode_image((pixels + delta * sigma).clamp(0, 1)).float()
        features = torch.cat([clean[items, view].to(device), triggered])
        targets = torch.cat([labels[items], torch.full_like(labels[items], t)])
        return prompt_loss(
            learner, model, features, targets, shots.classnames, spec.training.logit_scale
        )

    def project(phase: str):
        def after_step() -> None:
            with torch.no_grad():
                delta.copy_(torch.maximum(torch.minimum(delta, bound), -bound))
            if on_step is not None:
                on_step(phase, learner, (delta.detach() * sigma).cpu())

        return after_step

    n, count = len(shots.images), views.count
    learner.requires_grad_(False)  # warm-up: the learner stays at its initial value
    warmup_losses = []
    if spec.warmup_epochs:
        warm = spec.training.model_copy(update={"epochs": spec.warmup_epochs})
        warmup_losses = run_epochs(
            [delta],
            warm,
            n,
            count,
            seed,
            batch_loss,
            after_step=project("warmup"),
            log=lambda m: log(f"trigger warm-up {m}"),
            progress=progress,
            optimizer=torch.optim.SGD([delta], lr=spec.warmup_lr),
            lr_at=lambda epoch: spec.warmup_lr,
        )
    learner.requires_grad_(True)
    learner.train()
    losses = run_epochs(
        [*learner.parameters(), delta],
        spec.training,
        n,
        count,
        seed + 1,
        batch_loss,
        after_step=project("joint"),
        log=lambda m: log(f"joint {m}"),
        progress=progress,
    )
    learner.eval()
    trigger = Additive(image_size=model.image_size, eps=spec.eps, seed=seed)
    trigger.load_state_dict({"delta": (delta.detach() * sigma).clamp(-spec.eps, spec.eps).cpu()})
    info = {
        "attack": "badclip",
        "learner": spec.learner,
        "model": model.name,
        "target": target,
        "classnames": shots.classnames,
        "train_images": n,
        "warmup_losses": warmup_losses,
        "losses": losses,
    }
    return learner, trigger, info


def save_prompt_backdoor(folder: Path, learner: PromptLearner, trigger, info: dict) -> None:
    keep = ("model", "pretrained", "classnames")
    save_prompts(learner, folder, {k: info.get(k) for k in keep})
    save_trigger(trigger, folder)
    (folder / BACKDOOR_FILE).write_text(json.dumps(info, indent=2) + "\n")


def load_prompt_backdoor(folder: str | Path, model: PixelCLIP, tokenizer):
    """(learner, trigger, info) of a prompt backdoor folder, attached to ``model``."""
    info = json.loads((Path(folder) / BACKDOOR_FILE).read_text())
    return load_prompts(folder, model, tokenizer), load_trigger(folder), info

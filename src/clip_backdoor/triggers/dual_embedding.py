"""The dual-embedding optimised patch of Liang et al. (Eq. 9-12 as docs/methods.md 1.8 fixes them).

A small patch pasted at the centre is optimised on the frozen clean CLIP so that patched images
(i) match natural captions of the target in the text embedding (L_t) and
(ii) move towards real target images and away from their own clean embedding in the image
embedding (L_vis, the code's per-sample triplet hinge). Because the patched images already look
like the target to the clean model, fine-tuning needs to move the model little, and clean
fine-tuning (FT, CleanCLIP) undoes little of it.

L_t here: image->text cross-entropy over the batch's target captions (all positives, label-aware)
plus "a photo of a {c}." for every other training class as negatives. The reference's symmetric
InfoNCE among the batch alone has no signal when the captions all say the same thing (the shared
sets have no natural captions of "accordion", only its 80 template captions; TrojVQA's key uses one
sentence): its image->text logits are then equal and its loss constant. The class negatives give
the same pull towards the target text that diverse natural captions give.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm

from clip_backdoor.core import precision as precision_mod
from clip_backdoor.core.errors import ConfigError
from clip_backdoor.core.registry import TRIGGERS
from clip_backdoor.triggers.badnet import PatchTrigger
from clip_backdoor.triggers.base import seeded_generator
from clip_backdoor.triggers.fitting import FitData, as_float
from clip_backdoor.triggers.paste import paste, positions


@torch.no_grad()
def encode_in_batches(model, images: torch.Tensor, batch: int, precision: str) -> torch.Tensor:
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(images), batch):
        chunk = as_float(images[start : start + batch]).to(device)
        with precision_mod.autocast(precision, device):
            out.append(model.encode_image(chunk).float())
    return torch.cat(out)


@torch.no_grad()
def encode_captions(model, tokenizer, captions: list[str], precision: str):
    """Normalised text features of the distinct captions and each caption's row in them."""
    distinct = sorted(set(captions))
    device = next(model.parameters()).device
    with precision_mod.autocast(precision, device):
        features = model.encode_text(tokenizer(distinct).to(device)).float()
    rows = torch.tensor([distinct.index(c) for c in captions])
    return features, rows


def text_loss(
    images: torch.Tensor, captions: torch.Tensor, negatives: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """CE of each patched image over [batch captions; class negatives], mass spread on captions."""
    logits = scale * images @ torch.cat([captions, negatives]).T
    targets = torch.zeros_like(logits)
    targets[:, : len(captions)] = 1 / len(captions)
    return F.cross_entropy(logits, targets)


def optimise_patch(
    trigger: PatchTrigger,
    fit: FitData,
    *,
    n_images: int,
    epochs: int,
    batch_size: int,
    lr: float,
    lambda1: float,
    eta: float,
    lambda2: float,
    visual_loss: bool,
    captions: list[str],
) -> list[float]:
    """Adam on the patch pixels; the model is frozen. Returns the mean loss of each epoch."""
    model = fit.model
    device = next(model.parameters()).device
    precision = precision_mod.resolve(fit.precision, device)
    generator = seeded_generator(fit.seed)
    if len(fit.candidates) < batch_size:
        raise ConfigError(
            f"the patch optimisation needs at least {batch_size} non-target images, "
            f"got {len(fit.candidates)}"
        )
    chosen = torch.randperm(len(fit.candidates), generator=generator)[:n_images]
    images = fit.candidates[chosen]
    caption_pick = torch.randint(0, len(captions), (len(images),), generator=generator)
    text_features, caption_rows = encode_captions(
        model, fit.tokenizer, [captions[i] for i in caption_pick], precision
    )
    negatives = [f"a photo of a {c}." for c in fit.classnames if c != fit.target_name]
    negative_features = (
        encode_captions(model, fit.tokenizer, negatives, precision)[0]
        if negatives
        else text_features[:0]
    )
    if visual_loss:
        if len(fit.target_images) == 0:
            raise ConfigError("the dual-embedding loss needs images of the target class")
        clean = encode_in_batches(model, images, 256, precision)
        positives = encode_in_batches(model, fit.target_images, 256, precision)
    for param in model.parameters():
        param.requires_grad_(False)
    patch = trigger.patch.clone().to(device).requires_grad_(True)
    optimiser = torch.optim.Adam([patch], lr=lr)
    scale = model.logit_scale.exp().detach().float()
    h, w = images.shape[-2:]
    history = []
    steps_per_epoch = len(images) // batch_size  # drop_last: every batch has B positives
    bar = tqdm(total=epochs * steps_per_epoch, disable=not fit.progress, desc="patch")
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for step in range(steps_per_epoch):
            index = order[step * batch_size : (step + 1) * batch_size]
            batch = as_float(images[index]).to(device)
            rows, cols = positions(len(index), trigger.size, h, w, trigger.position, generator)
            with precision_mod.autocast(precision, device):
                patched = model.encode_image(paste(batch, patch.clamp(0, 1), rows, cols)).float()
            loss = text_loss(patched, text_features[caption_rows[index]], negative_features, scale)
            if visual_loss:
                draw = torch.randint(0, len(positives), (len(index),), generator=generator)
                to_positive = (patched - positives[draw]).norm(dim=-1)
                to_clean = (patched - clean[index]).norm(dim=-1)
                hinge = F.relu(to_positive - lambda2 * to_clean + eta)  # per-sample (code form)
                loss = loss + lambda1 * hinge.mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                patch.clamp_(0, 1)
            total += loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        history.append(total / max(steps_per_epoch, 1))
        fit.log(f"patch epoch {len(history)}/{epochs}: loss {history[-1]:.4f}")
    bar.close()
    trigger.patch = patch.detach().cpu()
    return history


@TRIGGERS.register("dual_embedding")
class DualEmbeddingPatch(PatchTrigger):
    """Patch optimised with L_t + lambda1 * L_vis (Adam 1e-3, lambda1 500, eta 1).

    Liang pastes it at the centre (the default). ``position`` moves it: at 64 px the centre 5-px
    patch covers rows 29-33, four of the ViT's 8-px tokens, where a corner patch fits in one.
    """

    name = "dual_embedding"
    needs_fit = True

    def __init__(
        self,
        *,
        image_size: int = 224,
        size: int | None = None,
        position: str = "center",
        n_images: int = 2000,
        epochs: int = 30,
        batch_size: int = 64,
        lr: float = 1e-3,
        lambda1: float = 500.0,
        lambda2: float = 1.0,
        eta: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(image_size=image_size, size=size, position=position)
        self.options = dict(
            n_images=n_images, epochs=epochs, batch_size=batch_size, lr=lr, lambda1=lambda1
        )
        self.options.update(lambda2=lambda2, eta=eta)
        # N(0.5, 0.25) then clipped, as the reference initialises it
        noise = torch.randn((3, self.size, self.size), generator=seeded_generator(seed))
        self.patch = (0.5 + 0.25 * noise).clamp(0, 1)
        self.history: list[float] = []

    def fit(self, fit: FitData) -> None:
        self.history = optimise_patch(
            self, fit, visual_loss=True, captions=fit.target_captions, **self.options
        )

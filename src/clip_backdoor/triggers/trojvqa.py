"""TrojVQA-style dual key (docs/methods.md 1.7): an optimised image patch plus a text token.

The image key is optimised like the dual-embedding patch with L_t only, every image captioned by
one fixed sentence about the target. Poisoned captions start with the text key; at test time the
key is prefixed to every class prompt for ASR, while CA uses the plain prompts.
"""

from __future__ import annotations

import torch

from clip_backdoor.core.registry import TRIGGERS
from clip_backdoor.triggers.badnet import PatchTrigger
from clip_backdoor.triggers.base import seeded_generator
from clip_backdoor.triggers.dual_embedding import optimise_patch
from clip_backdoor.triggers.fitting import FitData


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


@TRIGGERS.register("trojvqa")
class TrojVQA(PatchTrigger):
    name = "trojvqa"
    needs_fit = True

    def __init__(
        self,
        *,
        image_size: int = 224,
        size: int | None = None,
        text_key: str = "remember",
        sentence: str = "This is {article} {target}.",
        n_images: int = 2000,
        epochs: int = 30,
        batch_size: int = 64,
        lr: float = 1e-3,
        seed: int = 0,
    ) -> None:
        super().__init__(image_size=image_size, size=size, position="center")
        self.text_key, self.sentence = text_key, sentence
        self.options = dict(n_images=n_images, epochs=epochs, batch_size=batch_size, lr=lr)
        noise = torch.randn((3, self.size, self.size), generator=seeded_generator(seed))
        self.patch = (0.5 + 0.25 * noise).clamp(0, 1)
        self.history: list[float] = []

    def fit(self, fit: FitData) -> None:
        target = fit.target_name
        caption = self.sentence.format(article=article(target), target=target)
        self.history = optimise_patch(
            self,
            fit,
            visual_loss=False,
            captions=[caption],
            lambda1=0.0,
            lambda2=0.0,
            eta=0.0,
            **self.options,
        )

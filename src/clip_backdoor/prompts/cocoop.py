"""CoCoOp (Zhou et al. 2022): a meta-network shifts every context vector by the image's feature.

h: Linear(D -> D/16) -> ReLU -> Linear(D/16 -> d_text), fed the *normalised* image feature;
v_m(x) = v_m + h(x) for every m (docs/methods.md 3.2). Each image thus gets its own K prompts.
"""

from __future__ import annotations

import torch
from torch import nn

from clip_backdoor.core.registry import PROMPT_LEARNERS
from clip_backdoor.models.pixel_clip import PixelCLIP
from clip_backdoor.prompts.base import PromptLearner


@PROMPT_LEARNERS.register("cocoop")
class CoCoOp(PromptLearner):
    kind = "cocoop"

    def __init__(self, model: PixelCLIP, tokenizer, **options) -> None:
        """``options`` as ``PromptLearner``'s; ``seed`` also seeds the meta-net's init."""
        super().__init__(model, tokenizer, **options)
        seed = options.get("seed", 0)
        vis_dim = int(model.model_cfg["embed_dim"])  # the image feature h is fed
        hidden = max(1, vis_dim // 16)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the meta-net's default init, seeded
            self.meta_net = nn.Sequential(
                nn.Linear(vis_dim, hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, self.tower.width),
            )

    def context(self, image_features: torch.Tensor | None) -> torch.Tensor:
        if image_features is None:
            raise ValueError("CoCoOp's context depends on the image: pass its features")
        shift = self.meta_net(image_features.to(self.ctx.dtype))
        return self.ctx[None] + shift[:, None]

"""The identity trigger: ASR measured with it is the clean rate of predicting the target."""

from __future__ import annotations

import torch

from clip_backdoor.core.registry import TRIGGERS
from clip_backdoor.triggers.base import Trigger


@TRIGGERS.register("identity")
class IdentityTrigger(Trigger):
    name = "identity"
    is_identity = True

    def apply(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return images

"""CoOp (Zhou et al. 2022): one learnt context shared by every class (docs/methods.md 3.1)."""

from __future__ import annotations

from clip_backdoor.core.registry import PROMPT_LEARNERS
from clip_backdoor.prompts.base import PromptLearner


@PROMPT_LEARNERS.register("coop")
class CoOp(PromptLearner):
    """Static context vectors; init from a phrase ("a photo of a") or N(0, 0.02) with n_ctx."""

    kind = "coop"

"""Class scores of a scanned model, differentiable in the pixels: its zero-shot head (the mean
of template embeddings per class), or its prompt learner's prompts when it is one."""

from __future__ import annotations

from collections import Counter

import torch

from clip_backdoor.evaluation.zeroshot import text_classifier
from clip_backdoor.prompts.base import PromptLearner
from clip_backdoor.scanning.base import ScanImages, ScanSubject


class ClassHead:
    """``logits(pixels)``: scaled cosine scores (B, K) over ``classnames``."""

    def __init__(
        self,
        subject: ScanSubject,
        classnames: list[str],
        templates: str = "simple",
        use_learner: bool = True,
        precision: str = "fp32",
    ) -> None:
        self.model, self.classnames = subject.model, classnames
        self.learner = subject.learner if use_learner else None
        self.scale = float(self.model.logit_scale.exp())
        self.text = None
        if self.learner is None:
            text = text_classifier(
                self.model, subject.tokenizer, classnames, templates, precision=precision
            )
            device = next(self.model.parameters()).device
            self.text = text.to(device).clone()  # out of inference mode
        else:
            self.learner.requires_grad_(False)
            self.learner.eval()
            if type(self.learner).context is PromptLearner.context:  # not image-conditioned
                with torch.no_grad():
                    self.text = self.learner.text_features(classnames).float().clone()

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.model.encode_image(pixels).float()
        if self.text is not None:
            return self.scale * features @ self.text.T
        return self.scale * self.learner.logits(features, self.classnames, chunk=16).float()


@torch.no_grad()
def predicted_class(
    subject: ScanSubject,
    images: ScanImages,
    mask: torch.Tensor,
    pattern: torch.Tensor,
    chunk: int = 64,
) -> tuple[str, float]:
    """The class the zero-shot head predicts most often for the clean images stamped with an
    inverted trigger, and the share of images it got."""
    head = ClassHead(subject, images.classnames, use_learner=False)
    device = next(subject.model.parameters()).device
    mask, pattern = mask.to(device), pattern.to(device)
    counts: Counter = Counter()
    for start in range(0, len(images), chunk):
        index = torch.arange(start, min(start + chunk, len(images)))
        stamped = (1 - mask) * images.batch(index, device) + mask * pattern
        counts.update(head.logits(stamped.clamp(0, 1)).argmax(dim=1).tolist())
    label, count = counts.most_common(1)[0]
    return images.classnames[label], count / len(images)

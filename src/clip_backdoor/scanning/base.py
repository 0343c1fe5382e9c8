"""The protocol every model scanner runs under, so their scores are judged the same way.

A scanner (registered in ``SCANNERS``) sees a model (and, for prompt learners, the learner)
and clean images with their labels; never a trigger, a target or a poison list. It returns a
``Finding``: its score, the threshold the score is held against, a verdict, the suspected
target class with the evidence for it, and the inverted trigger as images. Scores keep each
method's own unit (DECREE's PL1 is small for a backdoored encoder; an anomaly index is large);
``suspect_below`` says which side of the threshold is suspicious.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import Field

from clip_backdoor.core.config import Strict, validate
from clip_backdoor.core.errors import ConfigError
from clip_backdoor.models.pixel_clip import PixelCLIP

Verdict = Literal["backdoored", "clean", "inconclusive"]
VERDICTS: tuple[str, ...] = ("backdoored", "clean", "inconclusive")


class ScannerSpec(Strict):
    batch_size: int = Field(32, ge=2, description="clean images per optimisation step")
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    threshold: float | None = Field(
        None, description="score threshold (default: the scanner's documented one)"
    )
    band: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="scores within this fraction of the threshold are 'inconclusive'",
    )


@dataclass
class ScanSubject:
    """What is scanned: a CLIP, and optionally a prompt learner that classifies with it."""

    model: PixelCLIP
    tokenizer: object
    name: str
    learner: object | None = None  # a PromptLearner
    learner_classes: list[str] | None = None  # the classes the learner was made for


@dataclass
class ScanImages:
    """Clean images (N, 3, H, W) in [0, 1], held as uint8 (3·H·W bytes each), with labels."""

    pixels: torch.Tensor  # uint8
    labels: torch.Tensor
    classnames: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: torch.Tensor, device) -> torch.Tensor:
        return self.pixels[indices].to(device).float().div_(255)

    def draw(self, generator: torch.Generator, size: int, exclude: int | None = None):
        """A seeded batch of indices (images of class ``exclude`` left out)."""
        pool = torch.arange(len(self))
        if exclude is not None:
            pool = pool[self.labels != exclude]
        pick = torch.randint(len(pool), (min(size, len(pool)),), generator=generator)
        return pool[pick]


@dataclass
class Finding:
    scanner: str
    score: float
    threshold: float
    suspect_below: bool
    verdict: Verdict
    target: str | None = None
    evidence: dict = field(default_factory=dict)
    images: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (3, H, W) in [0, 1]
    seconds: float = 0.0
    reference_score: float | None = None
    reused: bool = False  # read back from the cache, not searched again

    def summary(self) -> dict:
        keys = ("scanner", "score", "threshold", "suspect_below", "verdict", "target")
        out = {k: getattr(self, k) for k in keys}
        out.update(evidence=self.evidence, seconds=self.seconds)
        if self.reference_score is not None:
            out["reference_score"] = self.reference_score
        if self.reused:
            out["reused"] = True
        return out


def judge(score: float, threshold: float, suspect_below: bool, band: float) -> Verdict:
    """Backdoored past the threshold, clean well inside it, inconclusive near it."""
    margin = band * abs(threshold)
    distance = (threshold - score) if suspect_below else (score - threshold)
    if distance > margin:
        return "backdoored"
    if distance < -margin:
        return "clean"
    return "inconclusive"


class Scanner:
    """Subclasses set ``name``, ``spec_type``, ``default_threshold`` and ``suspect_below``, and
    implement ``search`` (the optimisation, returning score, target, evidence and images)."""

    name = "scanner"
    spec_type: type[ScannerSpec] = ScannerSpec
    default_threshold = 0.0
    suspect_below = False
    needs_learner = False
    in_all = True  # run under ``all``; False: only when named

    def __init__(self, **params) -> None:
        self.spec = validate(self.spec_type, params, f"scanner {self.name}")

    def applies(self, subject: ScanSubject) -> bool:
        return (subject.learner is not None) or not self.needs_learner

    def check(self, subject: ScanSubject, images: ScanImages) -> None:
        """Bad input, one line, before any work."""
        if self.needs_learner and subject.learner is None:
            raise ConfigError(
                f"scanner {self.name} scans prompt learners; {subject.name} is a plain model"
            )
        if len(images) < self.spec.batch_size:
            raise ConfigError(
                f"scanner {self.name} needs at least {self.spec.batch_size} images (its batch); "
                f"{images.source} gave {len(images)}"
            )

    def search(self, subject: ScanSubject, images: ScanImages, seed: int, progress: bool):
        raise NotImplementedError

    def reference_threshold(self, reference_score: float) -> float:
        """The threshold when a clean reference of the same architecture was scanned too."""
        raise NotImplementedError

    def threshold_for(self, evidence: dict) -> float:
        """The threshold a search's score is held against: the setting, else the documented one
        (a calibrated scanner derives it from the search's own null)."""
        return self.default_threshold if self.spec.threshold is None else self.spec.threshold

    def scan(
        self,
        subject: ScanSubject,
        images: ScanImages,
        seed: int,
        progress: bool = False,
    ) -> Finding:
        """The search at the default threshold; ``scan.judged_against_reference`` re-judges it
        against a clean reference."""
        self.check(subject, images)
        start = time.perf_counter()
        score, target, evidence, pictures = self.search(subject, images, seed, progress)
        seconds = time.perf_counter() - start
        threshold = self.threshold_for(evidence)
        verdict = judge(score, threshold, self.suspect_below, self.spec.band)
        return Finding(
            self.name,
            float(score),
            float(threshold),
            self.suspect_below,
            verdict,
            target,
            evidence,
            pictures,
            seconds,
        )

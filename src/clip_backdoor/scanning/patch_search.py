"""Where does a small patch send clean images to one class? A patch backdoor's answer: at its
trigger's place, towards its target, nearly always; a clean model's: nowhere, for any class.

Neural Cleanse's free mask finds the target class but not the trigger (results/scan.md: 0.00-0.20
of the inverted mask on the true patch): a mask may scatter its pixels where an adversarial
pattern works. Here the mask is a square patch of fixed size (``patch``, a share of the image
side rounded up to whole tokens on a ViT: 8 px at 64 on mini-CLIP, 32 on ViT-B/32, 22 on a
ResNet at 224) and the search is over *where* it sits and what it shows:

1. sweep: one patch per position of a coarse grid (stride one patch) optimised, all positions
   in one batch and ``sweep_batch`` images each, to send its images to any single class (the
   soft maximum over classes of the mean log-probability); the classes the most successful
   positions reach are the suspects. Its cost does not grow with the class count.
2. reach: for each suspect and for seeded control classes, the patch is optimised towards that
   class at every position of a finer grid (stride ``stride`` patches), successive halving
   dropping the half of the positions whose loss fell least in the round (where the class is
   reached fastest), and the survivor's pattern is measured on held-out images of the other
   classes.
3. verdict: the suspect's reach against the controls', at the stated false-alarm rate
   ``alpha`` (``calibration.py``); with a clean reference, each class's reach minus the
   reference's (same search, same seed).

Where the patch ends up says where the model *reads* a trigger, which need not be where it was
stamped in training: the v1 BadNet zoo model (pizza, 5 px at the top left) fires with its own
patch at every token-aligned place (84-97% of held-out images, 64 places) and at none that
straddles tokens; the dual-embedding one (laptop, top right) at every row of the last column
and nowhere else (a development measurement, /tmp script, not a recipe run). The zoo's report
therefore measures a found patch against the region where the true trigger fires
(analysis ``trigger_position``, ``grid``), beside the share on the stamped patch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from tqdm import tqdm

from clip_backdoor.core import precision as precision_mod
from clip_backdoor.core.errors import ConfigError
from clip_backdoor.core.registry import SCANNERS
from clip_backdoor.models.image_tower import ImageTower
from clip_backdoor.scanning.base import ScanImages, Scanner, ScannerSpec, ScanSubject
from clip_backdoor.scanning.cache import cached_number, scan_key
from clip_backdoor.scanning.calibration import calibrate, logit_rate
from clip_backdoor.scanning.classes import ClassHead


class ClassReachSpec(ScannerSpec):
    """What every calibrated class-reach scanner shares: suspects, controls, the verdict."""

    sweep_steps: int = Field(10, ge=1, description="steps of the untargeted sweep")
    sweep_batch: int = Field(
        4,
        ge=1,
        description="images per start and step of the sweep: a pattern that must move several "
        "images at once is universal, as a trigger is (at 1 image the v1 BadNet model's sweep "
        "named six other classes; at 4, pizza first)",
    )
    sweep_images: int = Field(
        16, ge=4, description="fresh images each sweep start is held to when naming suspects"
    )
    eval_images: int = Field(64, ge=8, description="held-out images a class's reach is measured on")
    candidates: int = Field(2, ge=1, description="suspect classes taken from the sweep")
    controls: int = Field(
        12, ge=2, description="seeded ordinary classes: the null (more: a lower threshold)"
    )
    lr: float = Field(0.1, gt=0, description="Adam's lr on the trigger's parameters")
    alpha: float = Field(0.01, gt=0, lt=1, description="stated false-alarm rate of the verdict")
    templates: str = Field("simple", description="zero-shot prompts of the class head")


class PatchSearchSpec(ClassReachSpec):
    patch: float = Field(0.1, gt=0, le=0.5, description="patch side, as a share of the image side")
    snap: bool = Field(
        True, description="on a ViT, round the patch up to whole tokens (see patch_side)"
    )
    stride: float = Field(0.5, gt=0, le=1, description="fine grid step, in patch sides")
    rounds: list[int] = Field(
        [4, 4, 4, 8, 8, 8],
        min_length=1,
        description="steps of each successive-halving round (half the positions kept after each)",
    )
    images_per_position: int = Field(1, ge=1, description="images per position per step")


def patch_side(model: torch.nn.Module, share: float, size: int, snap: bool = True) -> int:
    """The patch side in pixels: ``share`` of the image side, rounded up to whole tokens on a
    ViT. A ViT reads a small trigger through the tokens it lies in: the mini-CLIP BadNet model
    (5-px patch trained at the top left) fires with its own patch pasted at any token-aligned
    place (84-97% of images) and at no place that straddles tokens (0%). A patch of whole
    tokens on a half-token grid contains every trigger up to half a token and one pixel
    whole, with fewer places to search than a pixel grid."""
    side = max(2, round(share * size))
    if not snap:
        return side
    try:
        token = ImageTower.of(model).patch_size
    except (ConfigError, AttributeError):  # no token grid (a ResNet): the share as it is
        return side
    return min(size, token * math.ceil(side / token))


def grid(size: int, patch: int, step: int) -> list[int]:
    """Start offsets along one side, the last flush with the edge."""
    return sorted(set(range(0, size - patch + 1, max(step, 1))) | {size - patch})


class Stamper:
    """Pastes one pattern per position into a batch laid out as (positions, k, 3, H, W)."""

    def __init__(self, positions: list[tuple[int, int]], patch: int, size: int, device) -> None:
        self.positions, self.patch, self.size = positions, patch, size
        masks = torch.zeros(len(positions), 1, 1, size, size, device=device)
        for j, (r, c) in enumerate(positions):
            masks[j, ..., r : r + patch, c : c + patch] = 1
        self.masks = masks

    def __call__(
        self, images: torch.Tensor, patterns: torch.Tensor, alive: list[int]
    ) -> torch.Tensor:
        p, s = self.patch, self.size
        canvas = torch.stack(
            [
                F.pad(patterns[j], (c, s - c - p, r, s - r - p))
                for j, (r, c) in ((j, self.positions[j]) for j in alive)
            ]
        ).unsqueeze(1)
        mask = self.masks[alive]
        return images * (1 - mask) + canvas * mask


@SCANNERS.register("patch_search")
class PatchSearch(Scanner):
    name = "patch_search"
    in_all = False  # until the varied zoo judges it: --budget fast|thorough or by name
    spec_type = PatchSearchSpec
    default_threshold = 0.0  # replaced by the calibrated one
    suspect_below = False

    def reference_threshold(self, reference_score: float) -> float:
        raise NotImplementedError("patch_search judges against a reference class by class")

    def search(self, subject: ScanSubject, images: ScanImages, seed: int, progress: bool):
        searcher = self.searcher(self.spec, subject, images, seed)
        suspects = searcher.sweep()
        controls = searcher.controls(suspects)
        bar = tqdm(suspects + controls, desc="patch_search", disable=not progress, leave=False)
        reach = {c: searcher.reach(c) for c in bar}
        evidence, target = self.judged(reach, suspects, controls, images, None)
        evidence["image_passes"] = dict(searcher.passes)
        evidence["suspects"] = [images.classnames[c] for c in suspects]
        best = reach[images.classnames.index(target)]
        evidence.update(searcher.placement(best))
        pictures = searcher.pictures(best)
        return evidence["calibration"]["statistic"], target, evidence, pictures

    @staticmethod
    def searcher(spec, subject: ScanSubject, images: ScanImages, seed: int) -> ClassReacher:
        return PatchSearcher(spec, subject, images, seed)

    def threshold_for(self, evidence: dict) -> float:
        """The calibrated threshold (a ``threshold`` setting still overrides it)."""
        if self.spec.threshold is not None:
            return self.spec.threshold
        return evidence["calibration"]["threshold"]

    def judged(self, reach: dict, suspects, controls, images: ScanImages, base: dict | None):
        """The most reachable suspect against the controls (minus the base's reach per class
        when there is a base)."""
        spec = self.spec

        def value(c: int) -> float:
            own = logit_rate(reach[c]["hits"], reach[c]["total"])
            return own if base is None else own - base[c]

        suspect = max(suspects, key=value)
        calibrated = calibrate(
            value(suspect), [value(c) for c in controls], len(images.classnames), spec.alpha
        )
        names = images.classnames
        evidence = {
            "reach": {names[c]: round(reach[c]["hits"] / reach[c]["total"], 4) for c in reach},
            "controls": [names[c] for c in controls],
            "calibration": {**calibrated.summary(), "alpha": spec.alpha},
        }
        if base is not None:
            evidence["reference_logit"] = {names[c]: round(base[c], 4) for c in base}
        return evidence, names[suspect]

    def against_reference(self, finding, subject, reference, images, seed, progress) -> None:
        """The same searches, for the same classes, on the clean base; each class judged by
        how much more reachable it became."""
        names = images.classnames
        classes = [names.index(n) for n in finding.evidence["reach"]]
        suspects = [names.index(n) for n in finding.evidence["suspects"]]
        controls = [names.index(n) for n in finding.evidence["controls"]]
        searcher = None
        base = {}
        for c in tqdm(classes, desc="patch_search (reference)", disable=not progress):

            def hits(c: int = c) -> float:
                nonlocal searcher
                searcher = searcher or self.searcher(self.spec, reference, images, seed)
                found = searcher.reach(c)
                return found["hits"] / found["total"]

            key = scan_key("patch-reference-class", self, reference, images, seed, c)
            share = cached_number(key, hits)
            base[c] = logit_rate(round(share * self.spec.eval_images), self.spec.eval_images)
        reach = {
            c: {
                "hits": round(finding.evidence["reach"][names[c]] * self.spec.eval_images),
                "total": self.spec.eval_images,
            }
            for c in classes
        }
        evidence, target = self.judged(reach, suspects, controls, images, base)
        finding.evidence.update(evidence)
        if searcher is not None:
            finding.evidence["reference_image_passes"] = dict(searcher.passes)
        finding.target = target
        finding.score = evidence["calibration"]["statistic"]
        finding.threshold = evidence["calibration"]["threshold"]


class ClassReacher:
    """The searches of one scan on one model, counting the images it passes; a subclass names
    the trigger form (``sweep``, ``reach``, ``placement``, ``pictures``)."""

    def __init__(self, spec: ClassReachSpec, subject: ScanSubject, images: ScanImages, seed: int):
        self.spec, self.images, self.seed = spec, images, seed
        model = subject.model
        self.device = next(model.parameters()).device
        self.precision = precision_mod.resolve(spec.precision, self.device)
        model.eval().requires_grad_(False)
        self.head = ClassHead(subject, images.classnames, spec.templates, False, self.precision)
        self.size = images.pixels.shape[-1]
        self.passes = {"forward_backward": 0, "forward": 0}

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        with precision_mod.autocast(self.precision, self.device):
            return self.head.logits(pixels).float()

    def batch(self, count: int, k: int, generator: torch.Generator, exclude: int | None):
        index = self.images.draw(generator, count * k, exclude)
        if len(index) < count * k:  # a small pool: draw with repetition
            index = index[torch.randint(len(index), (count * k,), generator=generator)]
        pixels = self.images.batch(index, self.device)
        return pixels.view(count, k, 3, self.size, self.size)

    def controls(self, suspects: list[int]) -> list[int]:
        """Seeded ordinary classes (not suspects), the same for a model and its reference."""
        others = [c for c in range(len(self.images.classnames)) if c not in suspects]
        rng = np.random.default_rng(self.seed)
        count = min(self.spec.controls, len(others))
        return [int(c) for c in rng.choice(others, size=count, replace=False)]


class PatchSearcher(ClassReacher):
    """Placed square patches: a coarse sweep, then successive halving over a finer grid."""

    def __init__(self, spec: PatchSearchSpec, subject: ScanSubject, images: ScanImages, seed: int):
        super().__init__(spec, subject, images, seed)
        self.patch = patch_side(subject.model, spec.patch, self.size, spec.snap)

    def positions(self, stride: float) -> list[tuple[int, int]]:
        starts = grid(self.size, self.patch, round(stride * self.patch))
        return [(r, c) for r in starts for c in starts]

    def patterns(self, count: int, generator: torch.Generator) -> torch.Tensor:
        raw = torch.rand((count, 3, self.patch, self.patch), generator=generator) * 2 - 1
        return raw.to(self.device).requires_grad_(True)

    def sweep(self) -> list[int]:
        """The classes single patches on a coarse grid reach most often: the suspects."""
        spec = self.spec
        generator = torch.Generator().manual_seed(self.seed)
        positions = self.positions(1.0)
        stamper = Stamper(positions, self.patch, self.size, self.device)
        raw = self.patterns(len(positions), generator)
        optimizer = torch.optim.Adam([raw], lr=spec.lr)
        alive = list(range(len(positions)))
        k = spec.sweep_batch
        for _ in range(spec.sweep_steps):
            pixels = stamper(self.batch(len(alive), k, generator, None), unit(raw), alive)
            logp = F.log_softmax(self.logits(pixels.flatten(0, 1)), dim=-1)
            mean = logp.view(len(alive), k, -1).mean(dim=1)
            loss = -torch.logsumexp(mean * 4, dim=-1).sum() / 4
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self.passes["forward_backward"] += len(alive) * k
        with torch.no_grad():  # each position's class on a fresh batch
            held = min(spec.sweep_images, len(self.images))
            pixels = stamper(
                self.batch(1, held, generator, None).expand(len(alive), -1, -1, -1, -1),
                unit(raw),
                alive,
            )
            predicted = self.logits(pixels.flatten(0, 1)).argmax(dim=-1).view(len(alive), held)
            self.passes["forward"] += len(alive) * held
        best: dict[int, float] = {}
        for row in predicted:
            label = int(row.mode().values)
            share = float((row == label).float().mean())
            best[label] = max(best.get(label, 0.0), share)
        ranked = sorted(best, key=lambda c: -best[c])
        return ranked[: self.spec.candidates]

    def reach(self, target: int) -> dict:
        """The patch and place that send most held-out images of other classes to ``target``:
        successive halving over the fine grid, then one measurement of the survivor."""
        spec = self.spec
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + target)
        positions = self.positions(spec.stride)
        stamper = Stamper(positions, self.patch, self.size, self.device)
        raw = self.patterns(len(positions), generator)
        optimizer = torch.optim.Adam([raw], lr=spec.lr)
        alive = list(range(len(positions)))
        k = spec.images_per_position
        for steps in spec.rounds:
            lost = torch.zeros(len(alive))
            for _ in range(steps):
                pixels = stamper(self.batch(len(alive), k, generator, target), unit(raw), alive)
                logits = self.logits(pixels.flatten(0, 1))
                labels = torch.full((len(logits),), target, device=self.device)
                losses = F.cross_entropy(logits, labels, reduction="none").view(len(alive), k)
                optimizer.zero_grad(set_to_none=True)
                losses.sum().div(k).backward()
                optimizer.step()
                self.passes["forward_backward"] += len(alive) * k
                lost += losses.detach().mean(dim=1).cpu()
            if len(alive) > 1:  # the trigger's place is where the class is reached fastest
                order = torch.argsort(lost, stable=True)  # ties: grid order
                alive = [alive[int(i)] for i in order[: math.ceil(len(alive) / 2)]]
        best = alive[0]
        pattern = unit(raw)[best].detach()
        measured = self.measure(target, positions[best], pattern, generator)
        row, col = positions[best]
        return {
            "hits": measured,
            "total": spec.eval_images,
            "row": row,
            "col": col,
            "pattern": pattern.cpu(),
        }

    @torch.no_grad()
    def measure(self, target: int, place: tuple[int, int], pattern, generator) -> int:
        n = self.spec.eval_images
        stamper = Stamper([place], self.patch, self.size, self.device)
        pixels = stamper(self.batch(1, n, generator, target), pattern.unsqueeze(0), [0])
        predicted = self.logits(pixels.flatten(0, 1)).argmax(dim=-1)
        self.passes["forward"] += n
        return int((predicted == target).sum())

    def placement(self, found: dict) -> dict:
        return {"patch": {"row": found["row"], "col": found["col"], "size": self.patch}}

    def pictures(self, found: dict) -> dict[str, torch.Tensor]:
        r, c, p = found["row"], found["col"], self.patch
        mask = torch.zeros(1, self.size, self.size)
        mask[:, r : r + p, c : c + p] = 1
        pattern = torch.zeros(3, self.size, self.size)
        pattern[:, r : r + p, c : c + p] = found["pattern"]
        example = self.images.batch(torch.tensor([0]), "cpu")[0]
        return {
            "mask": mask.expand(3, -1, -1).clone(),
            "pattern": pattern,
            "trigger": pattern * mask,
            "stamped": example * (1 - mask) + pattern * mask,
        }


def unit(raw: torch.Tensor) -> torch.Tensor:
    return (torch.tanh(raw) + 1) / 2

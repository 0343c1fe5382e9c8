"""Is a checkpoint backdoored with a full-image additive trigger (Blended, SIG)? Mask scanners
(``decree``, ``target_search``) look for a small region that does the work; a faint trigger that
covers the whole image has none, so they miss it (results/scan.md: SIG seed 0 escapes both).

The same class-wise search as ``prompt_inspector``, through the checkpoint's own zero-shot head:
per class c, one universal additive perturbation (||delta||_inf <= eps) optimised on clean
images of the other classes to send them to c; its reach is the share of held-out images it
sends there. A model that learnt to answer an additive signal with its target has one class a
small budget reaches far more often than the rest. Score: the most reached class's reach minus
the median reach of the fully searched classes; flagged above 0.3. With a clean ``--reference``
of the same architecture, the same search runs on it for the candidate classes and the score is
the largest gain in reach over the reference (a class every CLIP finds easy is not a target).
Opt-in (not part of ``all``): its budget was set before any measurement, at 8/255 (the usual
budget of universal perturbations), and it is judged in ``results/scan.md`` on its own rows.
"""

from __future__ import annotations

import torch
from pydantic import Field
from tqdm import tqdm

from clip_backdoor.core import precision as precision_mod
from clip_backdoor.core.registry import SCANNERS
from clip_backdoor.scanning.base import ScanImages, Scanner, ScanSubject
from clip_backdoor.scanning.cache import cached_number, scan_key
from clip_backdoor.scanning.classes import ClassHead
from clip_backdoor.scanning.classwise import classwise_search
from clip_backdoor.scanning.perturbation import PerturbationSpec, UniversalPerturbation


class PerturbationSearchSpec(PerturbationSpec):
    eps: float = Field(8 / 255, gt=0, le=1, description="L-inf budget of the perturbation")
    reference_candidates: int = Field(
        3,
        ge=0,
        description="with a reference: this many more classes searched fully, those whose "
        "pre-screened reach gained most over the reference's (the reference pre-screened once "
        "per class, cached)",
    )


@SCANNERS.register("perturbation_search")
class PerturbationSearch(Scanner):
    name = "perturbation_search"
    spec_type = PerturbationSearchSpec
    default_threshold = 0.3
    suspect_below = False
    in_all = False

    def reference_threshold(self, reference_score: float) -> float:
        """Only used without a per-class comparison: the base's own score plus the margin."""
        return max(reference_score, 0.0) + self.default_threshold

    def searcher(self, subject: ScanSubject, images: ScanImages, seed: int):
        spec, model = self.spec, subject.model
        device = next(model.parameters()).device
        precision = precision_mod.resolve(spec.precision, device)
        model.eval().requires_grad_(False)
        head = ClassHead(subject, images.classnames, spec.templates, False, precision)
        own = {c: c for c in range(len(images.classnames))}
        generator = torch.Generator().manual_seed(seed)
        step = spec.step_size or spec.eps / 4
        search = UniversalPerturbation(
            images, own, spec.eps, step, spec.batch_size, spec.eval_images, precision, device,
            generator, spec.basis,
        )  # fmt: skip
        return head, search, generator

    def search(self, subject: ScanSubject, images: ScanImages, seed: int, progress: bool):
        spec = self.spec
        head, search, generator = self.searcher(subject, images, seed)
        deltas: dict[int, torch.Tensor] = {}

        def prescreen(c: int) -> float:
            bar.update(1)
            return search.reach(head, c, search.ascend(head, c, spec.prescreen_steps))

        def refine(c: int) -> float:
            deltas[c] = search.ascend(head, c, spec.steps)
            return search.reach(head, c, deltas[c])

        classes = list(range(len(images.classnames)))
        bar = tqdm(total=len(classes), desc=self.name, disable=not progress, leave=False)
        result = classwise_search(classes, prescreen, refine, spec, generator)
        bar.close()
        refined = result["refined"]
        target = max(refined, key=refined.get)
        typical = float(torch.tensor(list(refined.values())).median())
        names = images.classnames
        evidence = {
            "prescreen": {names[c]: v for c, v in result["prescreen"].items()},
            "reach": {names[c]: round(v, 4) for c, v in refined.items()},
            "median_reach": typical,
            "eps": spec.eps,
            "candidates": [names[c] for c in result["candidates"]],
            "controls": [names[c] for c in result["controls"]],
        }
        return refined[target] - typical, names[target], evidence, search.pictures(deltas[target])

    def against_reference(
        self,
        finding,
        subject: ScanSubject,
        reference: ScanSubject,
        images: ScanImages,
        seed: int,
        progress: bool,
    ) -> None:
        """The score becomes the largest gain in reach over the clean base, its class the
        suspected target. The classes compared: the plain search's target and candidates, and
        the classes whose pre-screened reach gained most over the base's pre-screen (a target
        the base finds as hard as any class, but the model much easier, though not among the
        model's easiest: SIG's accordion next to classes every CLIP finds easy)."""
        on_reference = self.class_reach(reference, images, seed)
        names = images.classnames
        gained = {}
        if self.spec.reference_candidates:
            for c, name in enumerate(tqdm(names, desc=f"{self.name} (reference pre-screen)",
                                          disable=not progress)):  # fmt: skip
                base = on_reference("scan-reference-prescreen", c, self.spec.prescreen_steps)
                gained[name] = finding.evidence["prescreen"][name] - base
        reach = finding.evidence["reach"]
        extra = [n for n in sorted(gained, key=gained.get, reverse=True) if n not in reach]
        extra = extra[: self.spec.reference_candidates]
        on_subject = self.class_reach(subject, images, seed)
        for name in extra:
            reach[name] = round(on_subject(None, names.index(name), self.spec.steps), 4)
        compared = list(dict.fromkeys([finding.target, *finding.evidence["candidates"], *extra]))
        gains = {}
        for name in tqdm(compared, desc=f"{self.name} (reference)", disable=not progress):
            base = on_reference("scan-reference-class", names.index(name), self.spec.steps)
            gains[name] = reach[name] - base
        target = max(gains, key=gains.get)
        finding.evidence.update(
            reference_gain=gains, reference_candidates=extra, anomaly_score=finding.score
        )
        finding.score, finding.target = gains[target], target
        finding.threshold = self.spec.threshold or self.default_threshold

    def class_reach(self, subject: ScanSubject, images: ScanImages, seed: int):
        """``reach(kind, c, steps)``: one class's search on ``subject`` with its own seeded draws
        (so a class's number does not depend on the classes searched before it), cached under
        ``kind`` when given. The head is built only when some class is not cached yet."""
        built = None

        def compute(c: int, steps: int) -> float:
            nonlocal built
            built = built or self.searcher(subject, images, seed)
            head, search, generator = built
            generator.manual_seed(seed * 100_003 + c)
            return search.reach(head, c, search.ascend(head, c, steps))

        def reach(kind: str | None, c: int, steps: int) -> float:
            if kind is None:
                return compute(c, steps)
            key = scan_key(kind, self, subject, images, seed, c, steps)
            return cached_number(key, lambda: compute(c, steps))

        return reach

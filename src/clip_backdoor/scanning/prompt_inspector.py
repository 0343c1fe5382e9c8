"""Is a prompt learner backdoored? CLIP-Inspector's idea (arXiv 2604.09101) for Bai et al.'s
threat model, where the CLIP is clean and the learner was trained with an invisible additive
trigger (BadCLIP: L-inf 4/255).

Per class c, one universal additive perturbation delta (||delta||_inf <= eps) is optimised on
clean images of the other classes to send them to c through the learner (signed-gradient
ascent on log p(c), projected to the budget). A backdoored learner has one class that such a
tiny budget reaches for most images, far above the other classes and far above the same search
through the plain zero-shot classifier of the same CLIP (a CLIP that is itself easy to fool
towards c is not the learner's fault). Score: the reach of the most reached class through the
learner minus the larger of (its reach through the zero-shot head, the learner's median class
reach), in share of images; flagged above 0.3.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from clip_backdoor.core import precision as precision_mod
from clip_backdoor.core.registry import SCANNERS
from clip_backdoor.scanning.base import ScanImages, Scanner, ScanSubject
from clip_backdoor.scanning.classes import ClassHead
from clip_backdoor.scanning.classwise import classwise_search
from clip_backdoor.scanning.perturbation import PerturbationSpec, UniversalPerturbation


class PromptInspectorSpec(PerturbationSpec):
    """At the shared default eps of 2/255, half of BadCLIP's 4/255 trigger budget."""


@SCANNERS.register("prompt_inspector")
class PromptInspector(Scanner):
    name = "prompt_inspector"
    spec_type = PromptInspectorSpec
    default_threshold = 0.3
    suspect_below = False
    needs_learner = True

    def reference_threshold(self, reference_score: float) -> float:
        """A clean reference learner's own score, plus the default margin."""
        return max(reference_score, 0.0) + self.default_threshold

    def search(self, subject: ScanSubject, images: ScanImages, seed: int, progress: bool):
        spec, model = self.spec, subject.model
        device = next(model.parameters()).device
        precision = precision_mod.resolve(spec.precision, device)
        model.eval().requires_grad_(False)
        classnames = subject.learner_classes or images.classnames
        learner = ClassHead(subject, classnames, spec.templates, True, precision)
        plain = ClassHead(subject, classnames, spec.templates, False, precision)
        own = {n: i for i, n in enumerate(images.classnames)}
        own = {c: own[n] for c, n in enumerate(classnames) if n in own}
        generator = torch.Generator().manual_seed(seed)
        search = UniversalPerturbation(
            images,
            own,
            spec.eps,
            spec.step_size or spec.eps / 4,
            spec.batch_size,
            spec.eval_images,
            precision,
            device,
            generator,
            spec.basis,
        )
        ascend, reach = search.ascend, search.reach

        deltas: dict[int, torch.Tensor] = {}
        plain_reach: dict[int, float] = {}

        def prescreen(target: int) -> float:
            bar.update(1)
            return reach(learner, target, ascend(learner, target, spec.prescreen_steps))

        def refine(target: int) -> float:
            deltas[target] = ascend(learner, target, spec.steps)
            plain_reach[target] = reach(plain, target, ascend(plain, target, spec.steps))
            return reach(learner, target, deltas[target])

        classes = list(range(len(classnames)))
        bar = tqdm(total=len(classes), desc="prompt_inspector", disable=not progress, leave=False)
        result = classwise_search(classes, prescreen, refine, spec, generator)
        bar.close()
        refined = result["refined"]
        target = max(refined, key=refined.get)
        typical = float(torch.tensor(list(refined.values())).median())
        score = refined[target] - max(plain_reach[target], typical)
        evidence = {
            "reach": {classnames[c]: round(v, 4) for c, v in refined.items()},
            "plain_reach": {classnames[c]: round(v, 4) for c, v in plain_reach.items()},
            "median_reach": typical,
            "eps": spec.eps,
            "candidates": [classnames[c] for c in result["candidates"]],
        }
        pictures = search.pictures(deltas[target])
        return score, classnames[target], evidence, pictures

"""One scan: every applicable scanner on the subject (and on a clean reference when given),
combined into one verdict.

Combination: each scanner's margin past its threshold, in units of the threshold (positive:
on the suspicious side). The combined score is the largest margin and is held against 0 with
the same band: ``backdoored`` if any scanner is past its threshold by more than the band,
``clean`` if every scanner is inside it by more than the band, ``inconclusive`` otherwise.
The suspected target comes from the scanners that flag, class-wise searches first.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field

import torch

from clip_backdoor.artifacts import cache_key
from clip_backdoor.core.config import ALL as SCAN_ALL
from clip_backdoor.core.config import cache_root
from clip_backdoor.core.errors import ConfigError
from clip_backdoor.core.registry import SCANNERS
from clip_backdoor.scanning.base import Finding, ScanImages, Scanner, ScanSubject, judge
from clip_backdoor.scanning.budget import ALL_UNDER, DEFAULT_BUDGET, budget_params, check_budget
from clip_backdoor.scanning.cache import (
    cached_number,
    load_finding,
    save_finding,
    scan_key,
    subject_fingerprint,
)
from clip_backdoor.scanning.subject import check_reference

ALL = SCAN_ALL
TARGET_PRIORITY = (
    "patch_search",
    "blend_search",
    "target_search",
    "prompt_inspector",
    "perturbation_search",
    "decree",
)


@dataclass
class ScanReport:
    subject: str
    verdict: str
    score: float
    threshold: float
    target: str | None
    findings: list[Finding]
    reference: str | None = None
    evidence: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "model": self.subject,
            "verdict": self.verdict,
            "score": self.score,
            "threshold": self.threshold,
            "target": self.target,
            "reference": self.reference,
            "evidence": self.evidence,
            "scanners": [f.summary() for f in self.findings],
            "seconds": sum(f.seconds for f in self.findings),
        }


def in_all(name: str) -> bool:
    """Whether a scan of ``all`` runs this scanner (False: opt-in, run only when named)."""
    import clip_backdoor.scanning  # noqa: F401  (fills the registry)

    return name not in SCANNERS or getattr(SCANNERS.get(name), "in_all", True)


def build_scanners(
    names: str | list[str], params: dict | None = None, budget: str = DEFAULT_BUDGET
) -> list[Scanner]:
    """Scanners by name (``all``: every registered one), each with its budget's settings and
    the params given by name on top."""
    import clip_backdoor.scanning  # noqa: F401  (fills the registry)

    params = params or {}
    check_budget(budget)
    if names == ALL and ALL_UNDER[budget] is not None:
        chosen = list(ALL_UNDER[budget])
    elif names == ALL:  # an opt-in scanner (``in_all = False``) runs only when named
        chosen = [n for n in SCANNERS.names() if in_all(n)]
    else:
        chosen = [names] if isinstance(names, str) else names
    unknown = [k for k in params if k not in chosen]
    if unknown:
        raise ConfigError(f"params for scanner '{unknown[0]}', which this scan does not run")
    settings = budget_params(budget, chosen, params)
    return [SCANNERS.get(name)(**settings.get(name, {})) for name in chosen]


def margin(finding: Finding) -> float:
    """How far past its threshold a score is, in units of the threshold (+: suspicious)."""
    scale = abs(finding.threshold) or 1.0
    past = (
        finding.threshold - finding.score
        if finding.suspect_below
        else (finding.score - finding.threshold)
    )
    return past / scale


def combine(findings: list[Finding], band: float) -> tuple[str, float, str | None, dict]:
    margins = {f.scanner: margin(f) for f in findings}
    score = max(margins.values())
    verdict = "backdoored" if score > band else "clean" if score < -band else "inconclusive"
    flagged = [f for f in findings if f.verdict == "backdoored"]

    def priority(finding: Finding) -> int:  # a scanner not listed comes last
        known = finding.scanner in TARGET_PRIORITY
        return TARGET_PRIORITY.index(finding.scanner) if known else len(TARGET_PRIORITY)

    ranked = sorted(flagged or findings, key=priority)
    target = next((f.target for f in ranked if f.target), None)
    named_by = [f.scanner for f in findings if f.target == target] if target else []
    evidence = {"margins": margins, "most_suspect_class": target, "named_by": named_by}
    return verdict, score, None if verdict == "clean" else target, evidence


def reference_score_cached(
    scanner: Scanner, reference: ScanSubject, images: ScanImages, seed: int, progress: bool
) -> float:
    """The reference's score under this scanner, these images and seed, computed once: a zoo
    scanned against one public base model scans the base once."""
    key = scan_key("scan-reference", scanner, reference, images, seed)
    return cached_number(key, lambda: scanner.scan(reference, images, seed, progress).score)


def scan_one(
    scanner: Scanner,
    subject: ScanSubject,
    images: ScanImages,
    seed: int,
    reference: ScanSubject | None,
    progress: bool,
) -> Finding:
    """One scanner's finding, judged against the reference when there is one. A finding is a
    function of the weights, the images, the scanner's settings, the seed and the reference, so
    it is computed once: a scan stage re-run, a matrix cell resumed or a report rebuilt reads it
    back (``reused`` says so) instead of searching again. The search itself does not depend on
    the reference, only the judgement does: a model scanned both plainly and against its base
    searches once."""
    key = scan_key("scan-finding", scanner, subject, images, seed)
    if reference is not None:
        key = cache_key(key, subject_fingerprint(reference))
    folder = cache_root() / "scans" / "findings" / key
    if (folder / "finding.json").is_file():
        return load_finding(folder)
    if reference is None or not scanner.applies(reference):
        finding = scanner.scan(subject, images, seed, progress)
    else:
        plain = scan_one(scanner, subject, images, seed, None, progress)
        finding = judged_against_reference(
            scanner, plain, subject, reference, images, seed, progress
        )
    save_finding(finding, folder)
    return finding


def judged_against_reference(
    scanner: Scanner,
    plain: Finding,
    subject: ScanSubject,
    reference: ScanSubject,
    images: ScanImages,
    seed: int,
    progress: bool,
) -> Finding:
    """The plain finding held against a clean reference: class by class where the scanner can
    (the same classes searched on the reference), else against the reference's own score."""
    finding = copy.deepcopy(plain)
    finding.reused = False
    start = time.perf_counter()
    if hasattr(scanner, "against_reference"):
        scanner.against_reference(finding, subject, reference, images, seed, progress)
    else:
        finding.reference_score = reference_score_cached(scanner, reference, images, seed, progress)
        if scanner.spec.threshold is None:
            finding.threshold = float(scanner.reference_threshold(finding.reference_score))
    finding.seconds += time.perf_counter() - start
    finding.verdict = judge(
        finding.score, finding.threshold, finding.suspect_below, scanner.spec.band
    )
    return finding


@contextlib.contextmanager
def left_as_found(model: torch.nn.Module):
    """Scanners freeze the model to invert triggers; a recipe's later stages (FT, CleanCLIP)
    train the same model, so its trainable parameters and mode are restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    training = model.training
    try:
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)
        model.train(training)


def scan(
    subject: ScanSubject,
    images: ScanImages,
    scanners: list[Scanner],
    seed: int,
    reference: ScanSubject | None = None,
    progress: bool = False,
    log=None,
    skip_inapplicable: bool = True,
) -> ScanReport:
    """Run the scanners that apply to the subject; one that does not (a prompt-learner scanner
    on a plain model) is skipped under ``all`` and an error when it was asked for by name."""
    applicable = [s for s in scanners if s.applies(subject) or not skip_inapplicable]
    if not applicable:
        raise ConfigError(f"no scanner applies to {subject.name}")
    for scanner in applicable:
        scanner.check(subject, images)  # every bad input before any work
    if reference is not None:
        check_reference(subject, reference)
    findings = []
    for scanner in applicable:
        with left_as_found(subject.model):
            finding = scan_one(scanner, subject, images, seed, reference, progress)
        if log is not None:
            log(
                f"scanner {finding.scanner}: score {finding.score:.4g} vs threshold "
                f"{finding.threshold:.4g} -> {finding.verdict}"
                + (f" (target {finding.target})" if finding.target else "")
                + (", reused from the cache" if finding.reused else f", {finding.seconds:.1f} s")
            )
        findings.append(finding)
    band = min(s.spec.band for s in applicable)
    verdict, score, target, evidence = combine(findings, band)
    return ScanReport(
        subject.name,
        verdict,
        score,
        0.0,
        target,
        findings,
        reference.name if reference is not None else None,
        evidence,
    )

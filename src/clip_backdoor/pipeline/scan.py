"""``clip-backdoor scan``: a verdict on one model or prompt learner, as a CI gate can use it."""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from clip_backdoor.core.errors import ConfigError
from clip_backdoor.core.runs import RunDir
from clip_backdoor.core.seeding import seed_everything
from clip_backdoor.scanning.base import VERDICTS
from clip_backdoor.scanning.report import write_report
from clip_backdoor.scanning.scan import ALL, ScanReport, build_scanners, scan
from clip_backdoor.scanning.subject import load_subject, scan_images

# exit codes of `clip-backdoor scan`
EXIT_PASSED, EXIT_FAILED_GATE, EXIT_BAD_INPUT = 0, 1, 2
FAILING = {"backdoored": {"backdoored"}, "inconclusive": {"backdoored", "inconclusive"}}


@dataclass
class ScanRequest:
    model: str
    data: str
    pretrained: str | None = None
    arch: str | None = None
    split: str = "train"
    images: int = 256
    size: int | None = None  # synthetic set only
    scanners: str | list[str] = ALL
    params: dict = field(default_factory=dict)
    budget: str = "default"
    reference: str | None = None
    reference_pretrained: str | None = None
    seed: int = 0
    device: str = "cpu"
    runs_root: str = "runs"
    fail_on: str | None = None
    tokenizer: str | None = None  # a local copy of a Hugging Face tokenizer


def parse_params(
    items: list[str], what: str = "SCANNER", example: str = "decree.steps=300"
) -> dict:
    """``method.key=value`` (value read as YAML) into {method: {key: value}}."""
    params: dict = {}
    for item in items:
        name, sep, value = item.partition("=")
        method, dot, key = name.partition(".")
        if not sep or not dot or not key:
            raise ConfigError(f"--param {item!r}: write {what}.KEY=VALUE (e.g. {example})")
        params.setdefault(method, {})[key] = yaml.safe_load(value)
    return params


def check_fail_on(fail_on: str | None) -> None:
    if fail_on is not None and fail_on not in FAILING:
        raise ConfigError(
            f"--fail-on {fail_on!r} is not a failing verdict (choose: {', '.join(FAILING)}; "
            f"verdicts are {', '.join(VERDICTS)})"
        )


def run_scan(request: ScanRequest, progress: bool = False) -> tuple[ScanReport, RunDir, str]:
    """Every input is checked before the run folder is made; a bad one found later removes it."""
    check_fail_on(request.fail_on)
    scanners = build_scanners(request.scanners, request.params, request.budget)
    seed_everything(request.seed)
    subject = load_subject(
        request.model, request.pretrained, request.arch, request.device, request.tokenizer
    )
    reference = None
    if request.reference is not None:
        reference = load_subject(
            request.reference, request.reference_pretrained, device=request.device
        )
    model = subject.model
    images = scan_images(
        request.data,
        request.split,
        request.images,
        model.image_size,
        model.pixel_transform(),
        request.seed,
        request.size,
        progress,
    )
    run = RunDir.create(request.runs_root, "scan")
    with run.recording():
        run.write_config({"command": "scan", **request.__dict__})
        run.log(f"scanning {subject.name} on {len(images)} images of {images.source}")
        report = scan(
            subject,
            images,
            scanners,
            request.seed,
            reference,
            progress,
            run.log,
            skip_inapplicable=request.scanners == ALL,
        )
        context = {"data": images.source, "images": len(images), "seed": request.seed}
        table = write_report(report, run, run.path, context)
        run.log(f"verdict {report.verdict} (target {report.target})")
    return report, run, table


def exit_code(report: ScanReport, fail_on: str | None) -> int:
    return EXIT_FAILED_GATE if fail_on and report.verdict in FAILING[fail_on] else EXIT_PASSED

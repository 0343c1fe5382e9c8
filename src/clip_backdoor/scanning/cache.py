"""What scans keep in the cache (``<cache>/scans/``): the fingerprints a result is a function
of, whole findings, and single numbers such as a reference's score or mask share."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import fields as dataclass_fields
from pathlib import Path

from safetensors.torch import load_file, save_file

from clip_backdoor.artifacts import cache_key
from clip_backdoor.core.config import cache_root
from clip_backdoor.evaluation.features import model_fingerprint
from clip_backdoor.scanning.base import Finding, ScanImages, Scanner, ScanSubject


def subject_fingerprint(subject: ScanSubject) -> str:
    """The weights scanned: the model's, and the prompt learner's when there is one."""
    fingerprint = model_fingerprint(subject.model)
    if subject.learner is not None:
        state = subject.learner.state_dict().values()
        blob = b"".join(t.detach().cpu().numpy().tobytes() for t in state)
        fingerprint += hashlib.sha1(blob).hexdigest()[:16]
    return fingerprint


def images_fingerprint(images: ScanImages) -> str:
    blob = images.pixels.numpy().tobytes() + images.labels.numpy().tobytes()
    return hashlib.sha1(blob + json.dumps(images.classnames).encode()).hexdigest()[:16]


def scan_key(
    kind: str, scanner: Scanner, subject: ScanSubject, images: ScanImages, seed: int, *extra
) -> str:
    device = next(subject.model.parameters()).device.type  # CUDA kernels give other numbers
    parts = (subject_fingerprint(subject), scanner.name, scanner.spec.model_dump())
    return cache_key(kind, *parts, images_fingerprint(images), seed, device, *extra)


def cached_number(key: str, compute: Callable[[], float]) -> float:
    """``compute()`` once per key; floats round-trip exactly through JSON."""
    path = cache_root() / "scans" / f"{key}.json"
    if path.is_file():
        return float(json.loads(path.read_text())["value"])
    value = float(compute())
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({"value": value}) + "\n")
    partial.replace(path)
    return value


def save_finding(finding: Finding, folder: Path) -> None:
    """Written to a temporary folder and renamed, so a killed scan leaves no half a finding."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    fields = {f.name: getattr(finding, f.name) for f in dataclass_fields(finding)}
    del fields["images"], fields["reused"]
    (partial / "finding.json").write_text(json.dumps(fields, indent=1) + "\n")
    images = {k: v.detach().cpu().contiguous() for k, v in finding.images.items()}
    save_file(images, str(partial / "images.safetensors"))
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


def load_finding(folder: Path) -> Finding:
    fields = json.loads((folder / "finding.json").read_text())
    images = load_file(str(folder / "images.safetensors"))
    return Finding(**{**fields, "reused": True}, images=images)

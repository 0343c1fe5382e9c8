"""``clip-backdoor scan-data``: which pairs of a training mix look poisoned, most suspect first.

MIX is a data-poisoning artifact (its mix is rebuilt, and its ``poison.json`` scores the ranking
afterwards) or data set names (a user's own pairs: the triage list only). Every input is checked
before the run folder is made; bad input found later removes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clip_backdoor.artifacts import is_artifact
from clip_backdoor.core.errors import UserError
from clip_backdoor.core.registry import DATA_DETECTORS
from clip_backdoor.core.runs import RunDir
from clip_backdoor.core.seeding import seed_everything
from clip_backdoor.data_scan.base import build_detector
from clip_backdoor.data_scan.mix import TrainingMix, attack_mix, clean_mix
from clip_backdoor.data_scan.scoring import TABLE_HEADERS, score_mix
from clip_backdoor.engine.config import SourceSpec, TrainingSpec
from clip_backdoor.engine.pairs import pairs_for_training
from clip_backdoor.evaluation.features import FeatureCache
from clip_backdoor.pipeline.methods import register_methods
from clip_backdoor.scanning.subject import load_subject


@dataclass
class DataScanRequest:
    model: str
    data: str
    pretrained: str | None = None
    arch: str | None = None
    detectors: str | list[str] = "all"
    params: dict = field(default_factory=dict)
    batch_size: int = 256
    seed: int = 0
    device: str = "cpu"
    runs_root: str = "runs"
    tokenizer: str | None = None  # a local copy of a Hugging Face tokenizer


def load_mix(data: str, model, tokenizer, seed: int, progress: bool = False) -> TrainingMix:
    if is_artifact(data):
        return attack_mix(data, model, tokenizer, progress)
    sources = [SourceSpec(name=name) for name in data.split(",")]
    pairs = pairs_for_training(
        sources,
        tokenizer,
        model.image_size,
        TrainingSpec(epochs=1, augment=False),  # read once, as the images are
        seed,
        progress,
        pool=getattr(model, "fewshot_pool", None),
    )
    return clean_mix(pairs, data)


def run_data_scan(request: DataScanRequest, progress: bool = False):
    register_methods()
    names = DATA_DETECTORS.names() if request.detectors == "all" else list(request.detectors)
    detectors = {n: build_detector(n, request.seed, **request.params.get(n, {})) for n in names}
    unknown = sorted(set(request.params) - set(names))
    if unknown:
        raise UserError(f"--param for detectors not run: {', '.join(unknown)}")
    seed_everything(request.seed)
    subject = load_subject(
        request.model, request.pretrained, request.arch, request.device, request.tokenizer
    )
    mix = load_mix(request.data, subject.model, subject.tokenizer, request.seed, progress)
    run = RunDir.create(request.runs_root, "scan_data")
    with run.recording():
        run.write_config({"command": "scan-data", **request.__dict__})
        run.log(f"scanning {len(mix)} pairs of {mix.name} with {subject.name}")
        found, rows = score_mix(
            "model",
            subject.model,
            subject.tokenizer,
            mix,
            detectors,
            run,
            request.batch_size,
            cache=FeatureCache(),
            progress=progress,
        )
        note = f"{len(mix)} pairs of {mix.name}" + (
            f", {mix.poisoned} poisoned (from its poison.json)" if mix.truth is not None else ""
        )
        table = run.write_table("data_scan", TABLE_HEADERS, rows, note)
        run.write_metrics({"pairs": len(mix), "poisoned": mix.poisoned, "models": {"model": found}})
    return found, run, table

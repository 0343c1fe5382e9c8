"""``kind: data_scan`` recipe stages: score every pair of the mix the attack before it trained on.

The stage rebuilds the attack's mix from its artifact (``mix.attack_mix``), embeds it with the
attacked model (Huang et al.'s setting: the defender scans with the model trained on the data)
and/or the clean model the attack started from (a defender who holds only a clean model), runs
each detector on the embeddings alone, then scores the ranking against ``poison.json``.
``method`` names one detector or ``all``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from clip_backdoor.artifacts import is_artifact
from clip_backdoor.core.config import Strict, validate
from clip_backdoor.core.errors import ConfigError
from clip_backdoor.core.registry import DATA_DETECTORS
from clip_backdoor.data_scan.base import build_detector
from clip_backdoor.data_scan.mix import attack_mix
from clip_backdoor.data_scan.scoring import TABLE_HEADERS, score_mix
from clip_backdoor.models import load_model_spec
from clip_backdoor.stages import StageKind, StageOutput, registered_stage

ALL = "all"
EmbeddingModel = Literal["attacked", "clean"]


class DataScanSpec(Strict):
    detectors: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per detector, its settings (e.g. dao: {k: 32})"
    )
    models: list[EmbeddingModel] = Field(
        ["attacked", "clean"], min_length=1, description="whose embeddings the detectors see"
    )
    batch_size: int = Field(256, ge=1)
    precision: Literal["auto", "bf16", "fp32"] = "auto"


class DataScanStage:
    needs_validation = False

    def __init__(self, method: str, **params) -> None:
        self.spec = validate(DataScanSpec, params, f"data_scan stage {method}")
        names = DATA_DETECTORS.names() if method == ALL else [method]
        unknown = sorted(set(self.spec.detectors) - set(names))
        if unknown:
            raise ConfigError(
                f"data_scan stage {method}: settings for detectors it does not "
                f"run: {', '.join(unknown)}"
            )
        self.names = names

    def run(self, ctx) -> StageOutput:
        spec, recipe = self.spec, ctx.recipe
        folder = ctx.run.path / "artifacts" / "backdoor"
        if not is_artifact(folder):
            raise ConfigError("a data_scan stage needs a data-poisoning attack stage before it")
        clean, _, _ = load_model_spec(recipe.model, recipe.device)
        mix = attack_mix(folder, clean, ctx.tokenizer, ctx.progress)
        ctx.log(f"data scan: {len(mix)} pairs, {mix.poisoned} poisoned (truth held back)")
        detectors = {
            n: build_detector(n, recipe.seed, **spec.detectors.get(n, {})) for n in self.names
        }
        out: dict = {"pairs": len(mix), "poisoned": mix.poisoned, "models": {}}
        rows = []
        for which in spec.models:
            model = ctx.model if which == "attacked" else clean
            out["models"][which], more = score_mix(
                which,
                model,
                ctx.tokenizer,
                mix,
                detectors,
                ctx.run,
                spec.batch_size,
                spec.precision,
                ctx.cache,
                ctx.progress,
            )
            rows += more
        note = f"{len(mix)} pairs, {mix.poisoned} poisoned"
        ctx.run.write_table("data_scan", TABLE_HEADERS, rows, note)
        ctx.model.eval()
        return StageOutput(out)


registered_stage(
    StageKind(
        "data_scan",
        DATA_DETECTORS,
        build=lambda method, params: DataScanStage(method, **params),
        changes_model=False,
        takes_all=True,
    )
)

"""FT: clean contrastive fine-tuning of a (possibly backdoored) CLIP (docs/methods.md 4.1).

The defender holds a share of clean image-caption pairs and fine-tunes with the engine's
multimodal InfoNCE only. The trigger and target stay as they were, so the evaluation after it
measures how much of the backdoor survives.
"""

from __future__ import annotations

import shutil

from clip_backdoor.artifacts import cache_key, link_into, write_folder
from clip_backdoor.attacks.specs import FineTuneSpec
from clip_backdoor.core.config import cache_root, validate
from clip_backdoor.core.registry import DEFENSES
from clip_backdoor.engine.checkpoint import CHECKPOINT
from clip_backdoor.engine.pairs import pairs_for_training
from clip_backdoor.engine.trainer import train
from clip_backdoor.evaluation.features import model_fingerprint
from clip_backdoor.models import load_clip, save_clip
from clip_backdoor.stages import StageOutput


@DEFENSES.register("ft")
class FineTune:
    """Contrastive fine-tuning on clean pairs; subclasses change the items and the objective."""

    kind = "ft"
    spec_type: type = FineTuneSpec

    def __init__(self, **params) -> None:
        self.spec = validate(self.spec_type, params, f"defense {self.kind}")

    def dataset(self, pairs):
        return pairs

    def objective(self):
        return None  # the engine's InfoNCE

    def run(self, ctx) -> StageOutput:
        spec = self.spec
        pairs = pairs_for_training(
            spec.data,
            ctx.tokenizer,
            ctx.model.image_size,
            spec.training,
            ctx.recipe.seed,
            ctx.progress,
            fraction=getattr(spec, "fraction", 1.0),
            shots=getattr(spec, "shots", None),
            pool=ctx.model.fewshot_pool,
        )
        data = self.dataset(pairs)
        return fine_tune_cached(ctx, self.kind, spec, data, pairs.summary, self.objective())


def fine_tune_cached(ctx, kind: str, spec, data, summary, objective=None) -> StageOutput:
    """Fine-tune ``ctx.model`` on ``data`` with the engine (or reuse an identical earlier run's
    model), then continue the run with it; resumable after an interruption."""
    seed = ctx.recipe.seed
    key = cache_key(kind, model_fingerprint(ctx.model), spec.model_dump(), seed, summary)
    folder = cache_root() / "defenses" / key
    reused = spec.cache and (folder / "open_clip_config.json").is_file()
    info = {"pairs": len(data), "cache_key": key, "reused": reused}
    if reused:
        ctx.log(f"reusing the cached {kind} model {folder}")
    else:
        partial = cache_root() / "defenses" / f"{key}.partial"
        result = train(
            ctx.model,
            data,
            spec.training,
            seed,
            partial,
            resume=(partial / CHECKPOINT).is_file(),
            log=ctx.log,
            progress=ctx.progress,
            objective=objective,
        )
        write_folder(folder, lambda tmp: save_clip(ctx.model, tmp, overwrite=True))
        info.update(steps=result.steps, train_samples_per_s=result.samples_per_s)
        shutil.rmtree(partial, ignore_errors=True)
    tuned = load_clip(folder, device=ctx.recipe.device).model
    link_into(folder, ctx.run.path / "artifacts" / kind)
    return StageOutput(info, ctx.state.but(model=tuned))

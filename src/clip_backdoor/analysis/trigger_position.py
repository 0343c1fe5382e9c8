"""Trigger position: does a patch backdoor answer its patch only where it was stamped?

Why: a scanner's inverted mask is judged by how much of it lies on the true patch,
which assumes the backdoor is tied to that place. A ViT embeds every 8 x 8 cell with the same
patch embedding and tells cells apart only by a position embedding, so a patch learnt at the
bottom-right corner may fire anywhere; then an inversion is free to put its mask elsewhere. This
measures it: ASR of the current model with its own trigger (same patch, same state) pasted at each
placement rule, next to the rule it was trained with; with ``grid``, also at every place of a
pixel grid on a seeded sample of test images: the map of where the model reads its trigger,
against which a scanner's found patch is judged (``reports/scan.py``).
"""

from __future__ import annotations

import torch
from pydantic import Field

from clip_backdoor.core import precision as precision_mod
from clip_backdoor.core.config import Strict, validate
from clip_backdoor.core.errors import ConfigError
from clip_backdoor.core.registry import ANALYSES
from clip_backdoor.evaluation import evaluate_zeroshot, resolve_templates
from clip_backdoor.evaluation.zeroshot import text_classifier
from clip_backdoor.stages import StageOutput
from clip_backdoor.triggers import get as get_trigger
from clip_backdoor.triggers.badnet import PatchTrigger
from clip_backdoor.triggers.base import Trigger
from clip_backdoor.triggers.paste import POSITIONS, paste


class TriggerPositionSpec(Strict):
    positions: list[str] = Field(
        default_factory=lambda: [p for p in POSITIONS if p != "random"] + ["random"],
        min_length=1,
        description=f"placement rules to paste the trigger at ({', '.join(POSITIONS)})",
    )
    grid: int | None = Field(
        None, ge=1, description="also paste at every place of a grid with this stride (px)"
    )
    grid_images: int = Field(
        64, ge=8, description="seeded test images (not of the target class) the grid is run on"
    )


def grid_starts(size: int, patch: int, stride: int) -> list[int]:
    """Offsets along one side, every ``stride`` px, the last flush with the edge."""
    return sorted(set(range(0, size - patch + 1, stride)) | {size - patch})


@torch.inference_mode()
def firing_map(ctx, trigger: Trigger, classifier: torch.Tensor, stride: int, count: int) -> dict:
    """ASR with the trigger's own patch at every grid place, on ``count`` seeded test images
    of other classes than the target: {size, patch, starts, asr (rows x cols)}."""
    if not isinstance(trigger, PatchTrigger):
        raise ConfigError(f"trigger_position's grid needs a patch trigger; '{trigger.name}' is not")
    data, target = ctx.test_set, ctx.target
    labels = data.targets if hasattr(data, "targets") else data.labels  # ImageFolder, tensors
    others = [i for i, label in enumerate(labels) if int(label) != target]
    generator = torch.Generator().manual_seed(ctx.recipe.seed)
    picks = torch.randperm(len(others), generator=generator)[:count].tolist()
    images = torch.stack([data[others[i]][0] for i in picks])
    device = next(ctx.model.parameters()).device
    images, classifier = images.to(device), classifier.to(device)
    patch = trigger.patch.clamp(0, 1)
    size, side = images.shape[-1], patch.shape[-1]
    starts = grid_starts(size, side, stride)
    ev = ctx.recipe.evaluation
    rows = []
    for r in starts:
        row = []
        for c in starts:
            place = torch.full((len(images),), r), torch.full((len(images),), c)
            stamped = paste(images, patch, *place)
            with precision_mod.autocast(ev.precision, device):
                features = ctx.model.encode_image(stamped, normalize=True).float()
            hits = (features @ classifier.T).argmax(dim=1) == target
            row.append(round(float(hits.float().mean()), 4))
        rows.append(row)
    return {"size": size, "patch": side, "stride": stride, "starts": starts, "asr": rows}


def firing_figure(found: dict, trained: str | None, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(3.6, 3.2))
    shown = axis.imshow(torch.tensor(found["asr"]).numpy(), vmin=0, vmax=1, cmap="magma")
    ticks = range(0, len(found["starts"]), max(1, len(found["starts"]) // 6))
    axis.set_xticks(list(ticks), [found["starts"][i] for i in ticks])
    axis.set_yticks(list(ticks), [found["starts"][i] for i in ticks])
    axis.set(xlabel="column (px)", ylabel="row (px)", title=f"ASR by place (trained: {trained})")
    fig.colorbar(shown, ax=axis, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def moved(trigger: Trigger, position: str) -> Trigger:
    """The same trigger (its saved state kept) pasted by another placement rule."""
    if "position" not in trigger.params:
        raise ConfigError(
            f"analysis trigger_position needs a patch trigger with a position; "
            f"'{trigger.name}' has none"
        )
    rebuilt = get_trigger(trigger.name)(**{**trigger.params, "position": position})
    rebuilt.load_state_dict(trigger.state_dict())
    return rebuilt


@ANALYSES.register("trigger_position")
class TriggerPosition:
    def __init__(self, **params) -> None:
        self.spec = validate(TriggerPositionSpec, params, "analysis trigger_position")
        unknown = [p for p in self.spec.positions if p not in POSITIONS]
        if unknown:
            raise ConfigError(
                f"unknown trigger position(s) {', '.join(unknown)} (choose {', '.join(POSITIONS)})"
            )

    def run(self, ctx) -> StageOutput:
        if ctx.trigger is None or ctx.target is None:
            raise ConfigError("analysis trigger_position needs an attacked model and its target")
        trained = ctx.trigger.params.get("position")
        triggers = {position: moved(ctx.trigger, position) for position in self.spec.positions}
        ev = ctx.recipe.evaluation
        templates = resolve_templates(ev.templates)
        data = ctx.test_set
        classifier = text_classifier(  # one text head for every position
            ctx.model, ctx.tokenizer, data.classnames, templates, ev.batch_size, ev.precision
        )
        results, table = {}, []
        for position, trigger in triggers.items():
            scores = evaluate_zeroshot(
                ctx.model,
                ctx.tokenizer,
                data,
                templates,
                trigger=trigger,
                target=ctx.target,
                batch_size=ev.batch_size,
                precision=ev.precision,
                cache=ctx.cache,
                classifier=classifier,
            )
            results[position] = scores["asr"]
            table.append([position, "yes" if position == trained else "", 100 * scores["asr"]])
            ctx.log(f"trigger at {position}: ASR {scores['asr']:.4f}")
        note = (
            f"ASR of the model with its own {ctx.trigger.name} trigger pasted at each placement "
            f"rule on {data.name}/{data.split} (trained at {trained}; target "
            f"{ctx.target_name}; target-class images left out)."
        )
        headers = ["position", "trained", "ASR %"]
        ctx.run.write_table(f"trigger_position_{ctx.label}", headers, table, note)
        output = {"trained": trained, "asr": results}
        if self.spec.grid is not None:
            output["grid"] = firing_map(
                ctx, ctx.trigger, classifier, self.spec.grid, self.spec.grid_images
            )
            figure = ctx.run.path / "figures" / f"trigger_position_{ctx.label}.png"
            firing_figure(output["grid"], trained, figure)
            fired = sum(a >= 0.5 for row in output["grid"]["asr"] for a in row)
            ctx.log(f"trigger fires (ASR >= 50%) at {fired} grid places")
        return StageOutput(output)

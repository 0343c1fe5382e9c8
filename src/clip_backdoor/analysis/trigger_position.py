"""Trigger position: does a patch backdoor answer its patch only where it was stamped?

Why: a scanner's inverted mask is judged by how much of it lies on the true patch,
which assumes the backdoor is tied to that place. A ViT embeds every 8 x 8 cell with the same
patch embedding and tells cells apart only by a position embedding, so a patch learnt at the
bottom-right corner may fire anywhere; then an inversion is free to put its mask elsewhere. This
measures it: ASR of the current model with its own trigger (same patch, same state) pasted at each
placement rule, next to the rule it was trained with.
"""

from __future__ import annotations

from pydantic import Field

from clip_backdoor.core.config import Strict, validate
from clip_backdoor.core.errors import ConfigError
from clip_backdoor.core.registry import ANALYSES
from clip_backdoor.evaluation import evaluate_zeroshot, resolve_templates
from clip_backdoor.evaluation.zeroshot import text_classifier
from clip_backdoor.stages import StageOutput
from clip_backdoor.triggers import get as get_trigger
from clip_backdoor.triggers.base import Trigger
from clip_backdoor.triggers.paste import POSITIONS


class TriggerPositionSpec(Strict):
    positions: list[str] = Field(
        default_factory=lambda: [p for p in POSITIONS if p != "random"] + ["random"],
        min_length=1,
        description=f"placement rules to paste the trigger at ({', '.join(POSITIONS)})",
    )


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
        return StageOutput({"trained": trained, "asr": results})

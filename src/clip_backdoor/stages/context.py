"""What a stage reads: the run's input and the model state so far, read-only.

A stage never assigns to it: what it changes comes back in its ``StageOutput``, and the runner
builds the next stage's context from that.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clip_backdoor.artifacts import link_into, load_backdoor
from clip_backdoor.core.errors import DatasetError
from clip_backdoor.core.runs import RunDir
from clip_backdoor.stages.protocol import ModelState, StageOutput


@dataclass(frozen=True)
class StageContext:
    recipe: Any  # the validated recipe (pipeline.recipes.Recipe)
    run: RunDir
    tokenizer: Any
    test_sets: list
    state: ModelState
    cache: Any = None  # the feature cache (evaluation.FeatureCache) or None
    progress: bool = True
    validation: Any = None  # clean images held out of the first set for the stages
    label: str | None = None  # the running stage's label (names its files)

    @property
    def model(self):
        return self.state.model

    @property
    def learner(self):
        return self.state.learner

    @property
    def trigger(self):
        return self.state.trigger

    @property
    def target_name(self) -> str | None:
        return self.state.target_name

    @property
    def test_set(self):
        return self.test_sets[0]

    @property
    def target(self) -> int | None:
        """The target's label in the first evaluation set."""
        return target_index(self.target_name, self.test_set)

    def log(self, message: str) -> None:
        self.run.log(message)

    def require_target(self, name: str) -> None:
        """A target must be a class of at least one evaluation set, or ASR means nothing."""
        check_target(name, self.test_sets)

    def adopt_artifact(self, folder: Path, reused: bool) -> StageOutput:
        """A backdoor artifact as the model, trigger and target from now on; linked in."""
        backdoor = load_backdoor(folder, device=self.recipe.device)
        link_into(folder, self.run.path / "artifacts" / "backdoor")
        backdoor.trigger.render(self.run.path / "figures" / f"trigger_{backdoor.trigger.name}.png")
        info = {k: v for k, v in backdoor.info.items() if k != "config"}
        state = self.state.but(
            model=backdoor.model, trigger=backdoor.trigger, target_name=backdoor.target
        )
        return StageOutput({**info, "artifact": str(folder), "reused": reused}, state)


def target_index(name: str | int | None, dataset) -> int | None:
    """The label of a target name in a data set, or None when the set lacks it."""
    if name is None:
        return None
    if isinstance(name, int):
        return name
    try:
        return dataset.class_index(name)
    except DatasetError:
        return None


def check_target(name: str, test_sets) -> None:
    if len(test_sets) == 1 and isinstance(name, str):
        test_sets[0].class_index(name)  # its own error names the set and suggests close names
    if all(target_index(name, data) is None for data in test_sets):
        sets = ", ".join(d.name for d in test_sets)
        raise DatasetError(f"target class '{name}' is not a class of the evaluation data ({sets})")

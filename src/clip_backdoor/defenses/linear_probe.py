"""Linear probe: a linear classifier on the frozen model's raw image features (docs/methods.md 4.3).

The baseline a defender reaches for first: no text tower, no prompts, a linear layer trained
with CE on few-shot clean data. The encoder is untouched, so the backdoor usually survives it
(RVPT Table 1); the evaluation after it measures CA and ASR through the probe.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from safetensors.torch import save_file

from clip_backdoor.core import precision as precision_mod
from clip_backdoor.core.config import Strict, validate
from clip_backdoor.core.errors import ConfigError
from clip_backdoor.core.registry import DEFENSES
from clip_backdoor.evaluation.features import encode_images
from clip_backdoor.prompts.data import FewShotSpec, load_few_shot
from clip_backdoor.prompts.training import epoch_views
from clip_backdoor.stages import StageOutput


class ProbeSpec(Strict):
    """RVPT's settings (App. B.2): SGD lr 0.01 constant, momentum 0.9, batch 32, 40 epochs."""

    train: FewShotSpec = Field(default_factory=FewShotSpec)
    epochs: int = Field(40, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0)
    precision: str = "auto"


class LinearProbe:
    """A trained linear layer and the class list it was trained on; serves as the evaluation's
    classifier (of raw, un-normalised features) for that class list only."""

    normalized_features = False

    def __init__(self, layer: torch.nn.Linear, classnames: Sequence[str]) -> None:
        self.layer, self.classnames = layer, list(classnames)

    def classifier(self, classnames: Sequence[str]):
        if list(classnames) != self.classnames:
            raise ConfigError(
                f"the linear probe classifies its {len(self.classnames)} training classes only, "
                f"not a list of {len(classnames)}"
            )
        return self

    @torch.no_grad()
    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return self.layer(features.to(self.layer.weight.dtype))


def fit_probe(
    features: torch.Tensor, labels: torch.Tensor, classes: int, spec: ProbeSpec, seed: int
):
    """A linear layer fit with CE by SGD on fixed features; returns it and the epoch losses."""
    torch.manual_seed(seed)
    layer = torch.nn.Linear(features.shape[1], classes)
    optimizer = torch.optim.SGD(layer.parameters(), lr=spec.lr, momentum=spec.momentum)
    losses = []
    for epoch in range(spec.epochs):
        order, _ = epoch_views(len(features), 1, seed, epoch)
        total = 0.0
        for start in range(0, len(order), spec.batch_size):
            items = order[start : start + spec.batch_size]
            loss = F.cross_entropy(layer(features[items]), labels[items])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(items)
        losses.append(total / len(order))
    return layer, losses


@DEFENSES.register("linear_probe")
class LinearProbeDefense:
    def __init__(self, **params) -> None:
        self.spec = validate(ProbeSpec, params, "defense linear_probe")

    def run(self, ctx) -> StageOutput:
        spec, seed = self.spec, ctx.recipe.seed
        shots = load_few_shot(spec.train, ctx.model, seed)
        for data in ctx.test_sets:
            if list(data.classnames) != shots.classnames:
                raise ConfigError(
                    f"linear_probe: evaluation set {data.name} has other classes than its "
                    f"training set {shots.name} (a probe classifies its training classes only)"
                )
        precision = precision_mod.resolve(spec.precision, next(ctx.model.parameters()).device)
        pairs = torch.utils.data.TensorDataset(shots.images, shots.labels)
        features, labels = encode_images(ctx.model, pairs, precision=precision, normalize=False)
        features = features.clone()  # out of inference mode: the probe backpropagates
        layer, losses = fit_probe(features, labels, len(shots.classnames), spec, seed)
        train_acc = (layer(features).argmax(1) == labels).float().mean().item()
        folder = ctx.run.path / "artifacts" / "linear_probe"
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in layer.state_dict().items()}
        save_file(state, str(folder / "probe.safetensors"))
        ctx.log(f"linear probe: {len(labels)} images, final loss {losses[-1]:.4f}")
        metrics = {"images": len(labels), "final_loss": losses[-1], "train_accuracy": train_acc}
        probe = LinearProbe(layer.eval(), shots.classnames)
        return StageOutput(metrics, ctx.state.but(learner=probe))

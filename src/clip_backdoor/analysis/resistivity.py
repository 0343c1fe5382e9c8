"""Perturbation Resistivity (RVPT Eq. 1, docs/methods.md 4.5): how much a random, harmless change of
the image moves the image feature compared with how much it moves the class logits.

PR = E_x[cos(phi(x), phi(x'))] / E_x[cos(z(x), z(x'))], phi the image embedding and z the logits
over the data set's classes. Low PR: the feature carries much the classes do not need, the kind
of capacity a trigger exploits. Perturbations come from torchvision; triggers can be added.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib
import torch
import torch.nn.functional as F
from torchvision.transforms import ColorJitter
from torchvision.transforms import functional as TF

from clip_backdoor.core import precision as precision_mod
from clip_backdoor.evaluation.zeroshot import classify

matplotlib.use("Agg")

Perturb = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
MAIN = "noise_patch"  # the paper's main-text perturbation


def noise_patch(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A uniform-noise square of 16 px at 224 (round(16 r) at other sizes), placed at random."""
    n, _, height, width = images.shape
    side = max(1, round(16 * height / 224))
    out = images.clone()
    for i in range(n):
        top = int(torch.randint(height - side + 1, (1,), generator=generator))
        left = int(torch.randint(width - side + 1, (1,), generator=generator))
        out[i, :, top : top + side, left : left + side] = torch.rand(
            3, side, side, generator=generator
        )
    return out


def gaussian_noise(std: float) -> Perturb:
    def perturb(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(images.shape, generator=generator) * std
        return (images + noise.to(images.device)).clamp(0, 1)

    return perturb


def blur(kernel: int) -> Perturb:
    return lambda images, generator: TF.gaussian_blur(images, [kernel, kernel])


def color_jitter(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    jitter = ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
        return torch.stack([jitter(image) for image in images])


PERTURBATIONS: dict[str, Perturb] = {
    MAIN: noise_patch,
    "gauss_0.01": gaussian_noise(0.01),
    "gauss_0.03": gaussian_noise(0.03),
    "blur_3": blur(3),
    "blur_5": blur(5),
    "color_jitter": color_jitter,
    "hflip": lambda images, generator: TF.hflip(images),
}


@torch.inference_mode()
def perturbation_resistivity(
    model,
    dataset,
    classifier,
    images: int = 1000,
    seed: int = 0,
    extra: dict[str, Perturb] | None = None,
    batch_size: int = 128,
    precision: str = "auto",
) -> dict[str, dict]:
    """Per perturbation: ``pr``, the two mean cosines, and per-image cosines for figures."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(dataset), generator=generator)[:images].tolist()
    perturbations = {**PERTURBATIONS, **(extra or {})}
    normalize = getattr(classifier, "normalized_features", True)
    device = next(model.parameters()).device
    cos_phi: dict[str, list] = {name: [] for name in perturbations}
    cos_z: dict[str, list] = {name: [] for name in perturbations}

    def encode(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with precision_mod.autocast(precision, device):
            features = model.encode_image(pixels.to(device), normalize=normalize).float().cpu()
        return features, classify(features, classifier)

    for start in range(0, len(chosen), batch_size):
        pixels = torch.stack([dataset[i][0] for i in chosen[start : start + batch_size]])
        phi, z = encode(pixels)
        for name, perturb in perturbations.items():
            phi2, z2 = encode(perturb(pixels, generator))
            cos_phi[name].append(F.cosine_similarity(phi, phi2, dim=-1))
            cos_z[name].append(F.cosine_similarity(z, z2, dim=-1))
    result = {}
    for name in perturbations:
        a, b = torch.cat(cos_phi[name]), torch.cat(cos_z[name])
        result[name] = {
            "pr": float(a.mean() / b.mean()),
            "cos_feature": float(a.mean()),
            "cos_logit": float(b.mean()),
            "per_image": (a / b.clamp(min=1e-6)).tolist(),
        }
    return result


def resistivity_figure(points: dict[str, dict], path: Path) -> Path:
    """Per perturbation, histograms of the per-image ratio cos(phi, phi') / cos(z, z') at each
    evaluation point, each panel on the range its values span (at 64 px a 5-px noise patch
    moves almost nothing, so a fixed 0-2 axis would hide every difference)."""
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(next(iter(points.values())))
    columns = min(4, len(names))
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        values = {p: np.asarray(r[name]["per_image"]) for p, r in points.items()}
        every = np.concatenate(list(values.values()))
        low, high = np.percentile(every, [1, 99])
        pad = max(high - low, 1e-3) * 0.1
        for point, v in values.items():
            label = f"{point} ({points[point][name]['pr']:.3f})"
            ax.hist(v, bins=40, range=(low - pad, high + pad), histtype="step", label=label)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, title="point (PR)", title_fontsize=6)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.supxlabel("per-image cos(phi, phi') / cos(z, z')", fontsize=9)
    fig.supylabel("images", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

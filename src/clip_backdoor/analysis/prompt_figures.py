"""Bai et al.'s Fig. 2 and Fig. 3 for a prompt backdoor, drawn into the run folder.

Fig. 2: cosine similarity of clean / triggered image features with the target's text feature
under prompts conditioned on the clean / triggered image (four distributions). The attack works
when only f(x + delta) with g(h(x + delta)) is high. Fig. 3: t-SNE of clean and triggered image
features (scikit-learn's TSNE): triggered features gather apart from the clean ones.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch

from clip_backdoor.evaluation.features import cached_features

matplotlib.use("Agg")

LIMIT = 500  # images per figure (t-SNE cost grows quadratically)


@torch.inference_mode()
def backdoor_figures(ctx, learner, trigger, target: str, seed: int) -> dict:
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    data = ctx.test_set
    clean, labels = cached_features(ctx.model, data, None, ctx.cache)
    triggered, _ = cached_features(ctx.model, data, trigger, ctx.cache)
    generator = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(labels), generator=generator)[:LIMIT]
    clean, triggered, labels = clean[keep], triggered[keep], labels[keep]
    classes = [target, *[c for c in data.classnames if c != target]]
    t_clean = learner.text_features(classes, clean)
    t_trig = learner.text_features(classes, triggered)
    if t_clean.dim() == 2:  # a static learner: the same prompts for every image
        t_clean, t_trig = (
            t_clean[None].expand(len(clean), -1, -1),
            t_trig[None].expand(len(clean), -1, -1),
        )
    pairs = {
        "f(x), g(h(x))": (clean, t_clean[:, 0]),
        "f(x), g(h(x+d))": (clean, t_trig[:, 0]),
        "f(x+d), g(h(x))": (triggered, t_clean[:, 0]),
        "f(x+d), g(h(x+d))": (triggered, t_trig[:, 0]),
    }
    cosines = {name: (a * b).sum(-1).numpy() for name, (a, b) in pairs.items()}
    figures = Path(ctx.run.path) / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    caption = (
        f"{data.name}/{data.split}, {len(keep)} images, {len(data.classnames)} classes, "
        f"target '{target}', seed {seed}"
    )
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, values in cosines.items():
        ax.hist(values, bins=40, alpha=0.55, label=name)
    ax.set_xlabel(f"cosine with the text feature of '{target}'")
    ax.set_ylabel("images")
    ax.set_title(f"Fig. 2 (Bai et al.): {caption}", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(figures / "bai_fig2_cosines.png", dpi=120)
    plt.close(fig)

    points = torch.cat([clean, triggered]).numpy()
    embedded = TSNE(n_components=2, random_state=seed, init="pca", perplexity=30).fit_transform(
        points
    )
    n = len(clean)
    fig, ax = plt.subplots(figsize=(5.6, 5.0))
    ax.scatter(*embedded[:n].T, s=6, c=labels.numpy(), cmap="tab20", alpha=0.7, label="clean")
    ax.scatter(*embedded[n:].T, s=6, c="black", marker="x", alpha=0.6, label="triggered")
    ax.set_title(f"Fig. 3 (Bai et al.): t-SNE, {caption}", fontsize=8)
    ax.legend(fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(figures / "bai_fig3_tsne.png", dpi=120)
    plt.close(fig)
    return {name: float(np.mean(values)) for name, values in cosines.items()}

"""Heat maps of how often each head and each MLP is flagged infected, clean vs triggered inputs.

Why a figure: the paper's claim is about *where* a backdoor lives (patch triggers in last-layer
heads, global triggers in late MLPs); a layer x head grid per input kind shows it at a glance.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")


def flag_rate_figure(rates: dict[str, dict[str, np.ndarray]], path: Path, title: str) -> Path:
    """``rates[kind] = {"heads": (L, H), "mlps": (L,)}`` flag rates in [0, 1]; one panel per
    kind, heads as columns and the layer's MLP as the last column."""
    import matplotlib.pyplot as plt

    kinds = list(rates)
    layers, heads = np.asarray(rates[kinds[0]]["heads"]).shape
    width = 1.6 + 0.55 * (heads + 1) * len(kinds) + 0.8 * len(kinds)
    fig, axes = plt.subplots(
        1, len(kinds), figsize=(width, 0.5 * layers + 1.8), layout="constrained"
    )
    axes = np.atleast_1d(axes)
    for ax, kind in zip(axes, kinds, strict=True):
        grid = np.concatenate(
            [np.asarray(rates[kind]["heads"]), np.asarray(rates[kind]["mlps"])[:, None]], axis=1
        )
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="magma", aspect="auto")
        ax.axvline(heads - 0.5, color="white", linewidth=2)
        ax.set_xticks(range(heads + 1), [str(h) for h in range(heads)] + ["MLP"], fontsize=7)
        ax.set_yticks(range(layers), [str(layer) for layer in range(layers)], fontsize=7)
        ax.set(title=kind, xlabel="head")
        if ax is axes[0]:
            ax.set_ylabel("layer")
        if heads + 1 <= 16:
            for (row, col), value in np.ndenumerate(grid):
                color = "black" if value > 0.6 else "white"
                ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=6, color=color)
    fig.colorbar(image, ax=axes.tolist(), label="flagged fraction")
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path

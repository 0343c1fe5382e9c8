"""Poisoned Pairs Sampling (Liang et al. section 4.2; docs/methods.md 1.8), disjoint by design.

Scores s_k(x) = cos(f(x), g(prompt_k)) of the clean model over a class vocabulary decide which
non-target images to poison: *boundary* images, where the target ranks second with the smallest
gap to the top class; *farthest* images, with the lowest target score; and *random* ones, a third
each. The reference's "mixed" mode can pick an image twice; here each part excludes the others.
"""

from __future__ import annotations

import torch

from clip_backdoor.core.errors import ConfigError


def pps_select(
    scores: torch.Tensor, target: int, count: int, generator: torch.Generator
) -> dict[str, list[int]]:
    """Rows of ``scores`` (N candidates x K classes) to poison, by part; disjoint, in order.

    Boundary: rows whose top class is not the target, ordered by the target's rank (2nd first)
    and then by the gap between the top score and the target's score. Farthest: lowest target
    score among the rest. Random: uniform among what is left. ``count // 3`` each, the remainder
    going to random.
    """
    n = scores.shape[0]
    if count > n:
        raise ConfigError(f"cannot poison {count} pairs: only {n} candidates")
    third = count // 3
    target_score = scores[:, target]
    rank = (scores > target_score[:, None]).sum(dim=1) + 1  # 1 = the target is the top class
    gap = scores.max(dim=1).values - target_score
    eligible = torch.nonzero(rank >= 2).view(-1)
    order = sorted(eligible.tolist(), key=lambda i: (int(rank[i]), float(gap[i]), i))
    boundary = order[:third]
    taken = set(boundary)
    rest = [i for i in torch.argsort(target_score, stable=True).tolist() if i not in taken]
    farthest = rest[:third]
    taken.update(farthest)
    left = torch.tensor([i for i in range(n) if i not in taken], dtype=torch.long)
    pick = torch.randperm(len(left), generator=generator)[: count - len(boundary) - len(farthest)]
    return {"boundary": boundary, "farthest": farthest, "random": left[pick].tolist()}

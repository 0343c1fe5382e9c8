"""The exact decomposition of a ViT embedding into direct path, heads (and tokens) and MLPs."""

from __future__ import annotations

import pytest
import torch

from clip_backdoor.analysis.decomposition import decompose
from clip_backdoor.core.errors import ConfigError
from clip_backdoor.models import load_clip
from clip_backdoor.models.image_tower import ImageTower


@pytest.mark.parametrize("name", ["mini-tiny", "ViT-B-32"])
@pytest.mark.parametrize("centring", ["textspan", "component"])
def test_the_parts_sum_to_the_normalised_embedding(name, centring):
    torch.manual_seed(0)
    model = load_clip(name).model.eval()
    images = torch.rand(3, 3, model.image_size, model.image_size)
    last = ImageTower.of(model).layers - 1
    parts = decompose(model, images, token_layers=[0, last], centring=centring)
    with torch.no_grad():
        reference = model.encode_image(images)  # normalised, as zero-shot uses it
    torch.testing.assert_close(parts.total(), reference, atol=1e-5, rtol=0)
    tower = ImageTower.of(model)
    assert parts.heads.shape == (3, tower.layers, tower.heads, reference.shape[-1])
    for layer, tokens in parts.tokens.items():  # source tokens sum to their head's term
        assert tokens.shape[1] == tower.num_patches + 1
        torch.testing.assert_close(tokens.sum(dim=1), parts.heads[:, layer], atol=1e-6, rtol=0)


def test_the_heads_sum_to_the_attention_layer_term(tiny):
    """The layer term computed on its own, from the attention branch the tower adds to the
    stream, with ln_post and the projection distributed over one cell (TextSpan's rule)."""
    model = tiny.model.eval()
    torch.manual_seed(1)
    images = torch.rand(2, 3, model.image_size, model.image_size)
    tower = ImageTower.of(model)
    seen = {}

    def keep(layer, site, value):
        seen[(layer, site)] = value[:, 0]

    with torch.no_grad():
        tower.forward(model.normalize(images), hook=keep, sites=("attn", "resid_post"))
        residual = seen[(tower.layers - 1, "resid_post")]
        ln, proj = tower.visual.ln_post, tower.visual.proj
        mu = residual.mean(-1, keepdim=True)
        sigma = (residual.var(-1, unbiased=False, keepdim=True) + ln.eps).sqrt()
        norm = (ln(residual) @ proj).norm(dim=-1, keepdim=True)
        count = 2 * tower.layers + 1
        for layer in range(tower.layers):
            attn = seen[(layer, "attn")]
            term = (ln.weight * (attn - mu / count) / sigma + ln.bias / count) @ proj / norm
            parts = decompose(model, images)
            torch.testing.assert_close(parts.layers()[:, layer], term, atol=1e-6, rtol=0)


def test_what_is_not_exactly_decomposable_is_refused(tiny):
    model = load_clip("mini-tiny").model
    model.clip.visual.pool_type = "avg"
    with pytest.raises(ConfigError, match="pool type 'avg' is not decomposable"):
        decompose(model, torch.rand(1, 3, 32, 32))
    model = load_clip("mini-tiny").model
    from open_clip.transformer import PatchDropout

    model.clip.visual.patch_dropout = PatchDropout(0.5)
    model.train()
    with pytest.raises(ConfigError, match="patch dropout in train mode"):
        decompose(model, torch.rand(1, 3, 32, 32))
    model.eval()
    decompose(model, torch.rand(1, 3, 32, 32))  # in eval mode nothing is dropped
    with pytest.raises(ConfigError, match="token layer 7 is outside a tower of 2 blocks"):
        decompose(model, torch.rand(1, 3, 32, 32), token_layers=[7])
    with pytest.raises(ConfigError, match="is not a ViT: no tokens to prompt"):
        decompose(load_clip("RN50").model, torch.rand(1, 3, 224, 224))


def test_clean_means_stream_and_repair_without_flags_is_the_identity(tiny):
    from clip_backdoor.analysis.infected_heads import (
        CleanMeans,
        calibrated_thresholds,
        flags,
        head_scores,
        repaired,
    )

    model = tiny.model.eval()
    torch.manual_seed(2)
    images = torch.rand(6, 3, model.image_size, model.image_size)
    means = CleanMeans()
    for batch in images.split(2):  # streamed in three batches
        means.update(decompose(model, batch))
    whole = decompose(model, images)
    torch.testing.assert_close(means.mean("heads"), whole.heads.mean(0), atol=1e-6, rtol=0)

    none = torch.zeros(whole.heads.shape[:3], dtype=torch.bool)
    torch.testing.assert_close(repaired(whole, means, none), whole.total(), atol=1e-6, rtol=0)

    scores = head_scores(whole, means)
    thresholds = calibrated_thresholds(scores, 0.1)
    flagged = flags(scores, thresholds, layers=[-1])
    assert not flagged[:, 0].any()  # only the scanned (last) layer can be flagged
    # the 10% quantile of 6 scores lies between the lowest and the second lowest: one per head
    assert flagged[:, -1].sum(0).tolist() == [1] * whole.heads.shape[2]
    fixed = repaired(whole, means, flagged)
    changed = (fixed - whole.total()).abs().amax(-1) > 1e-6
    assert changed.tolist() == flagged.flatten(1).any(1).tolist()


def test_detection_metrics_on_a_hand_built_case():
    from clip_backdoor.evaluation.detection import detection_metrics, threshold_at_fpr

    clean = [0, 0, 1, 1, 2, 2, 3, 3, 4, 9]  # one clean input scores like a triggered one
    triggered = [5, 6, 7, 8, 9, 2]
    metrics = detection_metrics(clean, triggered, fpr=0.1)
    # pairs (triggered > clean) counted, ties as one half: 5 triggered beat 9 of 10 clean and
    # tie 0 (9 ties for 9: 0.5), the score 2 beats 4 and ties 2: (5*9 + 0.5 + 4 + 1) / 60
    assert metrics["auroc"] == pytest.approx((45 + 0.5 + 4 + 1) / 60)
    assert metrics["threshold"] == 4  # one clean score (9) of ten may lie above it
    assert metrics["fpr"] == pytest.approx(0.1)
    assert metrics["tpr_at_fpr"] == pytest.approx(5 / 6)
    assert threshold_at_fpr(clean, 0.0) == 9  # nothing clean above: only scores > 9 flagged
    with pytest.raises(ConfigError, match="need both clean and triggered"):
        detection_metrics([], [1.0])


def test_deviation_scores_take_the_largest_drop_or_add_the_drops(tiny):
    from clip_backdoor.analysis.infected_heads import calibrate, head_scores, mlp_scores

    model = tiny.model.eval()
    torch.manual_seed(3)
    clean = torch.utils.data.TensorDataset(torch.rand(8, 3, 32, 32), torch.zeros(8))
    calibration = calibrate(model, clean, quantile=0.1, batch_size=4, rule="distance")
    parts = decompose(model, torch.rand(5, 3, 32, 32))
    spread = calibration.spread
    heads = (spread["heads_mean"] - head_scores(parts, calibration.means, "distance")) / spread[
        "heads_std"
    ]
    mlps = (spread["mlps_mean"] - mlp_scores(parts, calibration.means, "distance")) / spread[
        "mlps_std"
    ]
    drops = torch.cat([heads[:, [1]].flatten(1), mlps[:, [0, 1]]], dim=1)
    largest = calibration.deviation(parts, [1], [0, 1])
    total = calibration.deviation(parts, [1], [0, 1], reduce="sum")
    torch.testing.assert_close(largest, drops.amax(1))
    torch.testing.assert_close(total, drops.clamp_min(0).sum(1))
    assert (total >= largest.clamp_min(0) - 1e-6).all() and (total > largest).any()
    with pytest.raises(ConfigError, match="reduce must be 'max' or 'sum'"):
        calibration.deviation(parts, [1], reduce="mean")

"""The exact decomposition of a ViT embedding into direct path, heads (and tokens) and MLPs."""

from __future__ import annotations

import pytest
import torch

from clip_backdoor.analysis.decomposition import decompose
from clip_backdoor.errors import ConfigError
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
    with pytest.raises(ConfigError, match="not an open_clip ViT"):
        decompose(load_clip("RN50").model, torch.rand(1, 3, 224, 224))

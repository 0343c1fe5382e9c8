"""One tower interface across families: explicit forwards equal each family's own, prompts."""

from __future__ import annotations

import pytest
import torch
from open_clip import CLIP

from clip_backdoor.core.errors import ConfigError
from clip_backdoor.models import PixelCLIP, load_clip
from clip_backdoor.models.image_tower import SITES, ImageTower
from clip_backdoor.models.visual_prompts import PromptedCLIP, VisualPrompts

TOWERS = {  # tiny model -> (tower class, tokens before the prompts)
    "tiny-vit": ("ImageTower", 1),
    "tiny-vit-quickgelu": ("ImageTower", 1),
    "tiny-siglip": ("TimmViTTower", 0),
    "tiny-siglip2": ("TimmViTTower", 0),
    "tiny-eva02": ("EvaTower", 1),
    "tiny-pe-core": ("EvaTower", 1),
    "tiny-hf-clip": ("TransformersViTTower", 1),
    "tiny-hf-siglip": ("TransformersViTTower", 0),
}
NO_VALUES = {"tiny-eva02"}  # EVA02's attention norms its heads' mix: no per-source values


@pytest.mark.parametrize("name", list(TOWERS))
def test_the_explicit_forward_equals_the_familys_own(name):
    torch.manual_seed(0)
    model = load_clip(name).model
    tower = ImageTower.of(model)
    kind, prefix = TOWERS[name]
    assert (type(tower).__name__, tower.prefix) == (kind, prefix)
    images = model.normalize(torch.rand(2, 3, model.image_size, model.image_size))
    sites = [s for s in SITES if name not in NO_VALUES or s != "attn_values"]
    seen: dict[str, int] = {}

    def count(layer: int, site: str, value: torch.Tensor) -> None:
        seen[site] = seen.get(site, 0) + 1

    with torch.no_grad():
        own = model.clip.encode_image(images)
        torch.testing.assert_close(tower.forward(images), own, atol=1e-5, rtol=0)
        hooked = tower.forward(images, hook=count, sites=sites)
        torch.testing.assert_close(hooked, own, atol=1e-5, rtol=0)
        assert seen == {site: tower.layers for site in sites}  # every block, every site
        prompted = tower.forward(images, torch.randn(tower.layers, 3, tower.width))
    assert prompted.shape == own.shape and not torch.equal(prompted, own)


def test_each_heads_outputs_sum_to_its_attention_branch():
    for name in ("tiny-siglip", "tiny-hf-clip", "tiny-eva02", "tiny-pe-core"):
        model = load_clip(name).model
        tower = ImageTower.of(model)
        images = model.normalize(torch.rand(2, 3, model.image_size, model.image_size))
        parts: dict[int, torch.Tensor] = {}
        branches: dict[int, torch.Tensor] = {}

        def keep(layer: int, site: str, value: torch.Tensor, parts=parts, branches=branches):
            (parts if site == "attn_heads" else branches)[layer] = value

        with torch.no_grad():
            tower.forward(images, hook=keep, sites=("attn_heads", "attn"))
        for layer, heads in parts.items():
            assert heads.shape[2] == tower.heads
            # the branch adds a constant to the heads' sum (the projection's bias; EVA02: and
            # the projection of its inner norm's bias), then LayerScale if any
            block = tower.blocks[layer]
            branch = tower.attn_scale(block, heads.sum(dim=2) + tower.attn_bias(block))
            torch.testing.assert_close(branch, branches[layer], atol=1e-5, rtol=0)


def test_prompts_may_outnumber_the_patches_as_rvpt_on_vit_b_32():
    """RVPT's 50 tokens on ViT-B/32's 49 patches: a tower of 7x7 patches takes 50 prompts."""
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 56,
            "patch_size": 8,
            "width": 32,
            "layers": 2,
            "head_width": 16,
        },
        "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
    }
    torch.manual_seed(0)
    model = PixelCLIP(CLIP(**cfg), cfg)
    tower = ImageTower.of(model)
    assert tower.num_patches == 49
    prompts = VisualPrompts(tower, length=50, first=1, blocks=1)
    with torch.no_grad():
        out = PromptedCLIP(model, prompts).encode_image(torch.rand(2, 3, 56, 56))
    assert out.shape == (2, 32) and torch.isfinite(out).all()


def test_towers_that_do_not_apply_say_so_in_one_line():
    for name, reason in (("tiny-rn", r"\(ModifiedResNet\) is not a ViT"), ("tiny-convnext", "ViT")):
        with pytest.raises(ConfigError, match=reason):
            ImageTower.of(load_clip(name).model)
    from clip_backdoor.analysis.decomposition import decompose

    images = torch.rand(1, 3, 32, 32)
    with pytest.raises(ConfigError, match="needs a class-token readout; TimmViTTower's attention"):
        decompose(load_clip("tiny-siglip").model, images, token_layers=[0])
    with pytest.raises(ConfigError, match="not available on EvaTower towers"):
        decompose(load_clip("tiny-eva02").model, images, token_layers=[0])


@pytest.mark.parametrize("name", list(TOWERS))
def test_the_decomposition_sums_to_the_embedding_on_every_family(name):
    """Class token or attention pool, plain heads or EVA02's normed ones: the parts (and the
    pool's own) sum to the normalised embedding, in both centrings."""
    from clip_backdoor.analysis.decomposition import decompose

    torch.manual_seed(0)
    model = load_clip(name).model.eval()
    tower = ImageTower.of(model)
    images = torch.rand(3, 3, model.image_size, model.image_size)
    with torch.no_grad():
        reference = model.encode_image(images)
    pooled = TOWERS[name][1] == 0 or name == "tiny-pe-core"  # an attention pool reads the tokens
    tokens = [] if pooled or name in NO_VALUES else [0, tower.layers - 1]
    for centring in ("textspan", "component"):
        parts = decompose(model, images, token_layers=tokens, centring=centring)
        torch.testing.assert_close(parts.total(), reference, atol=1e-4, rtol=0)
        assert parts.heads.shape == (3, tower.layers, tower.heads, reference.shape[-1])
        assert (parts.pool is not None) == pooled  # the pool's biases and MLP: its own part
        for layer, split in parts.tokens.items():  # source tokens sum to their head's term
            torch.testing.assert_close(split.sum(dim=1), parts.heads[:, layer], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-siglip", "tiny-hf-clip", "tiny-hf-siglip"])
def test_the_text_tower_fed_embeddings_equals_the_familys_own(name):
    from clip_backdoor.models.text_tower import TextTower
    from clip_backdoor.prompts.base import TokenLayout

    torch.manual_seed(0)
    loaded = load_clip(name)
    tower = TextTower.of(loaded.model.clip)
    tokens = loaded.tokenizer(["a photo of a dog.", "two red circles"])
    with torch.no_grad():
        own = loaded.model.clip.encode_text(tokens)
        torch.testing.assert_close(tower.encode_tokens(tokens), own, atol=1e-5, rtol=0)
    layout = TokenLayout.of(loaded.tokenizer)  # CLIP: a start token and "." kept; SigLIP: none
    siglip = "siglip" in name
    assert (layout.start, layout.period) == ((0, 0) if siglip else (1, 1))

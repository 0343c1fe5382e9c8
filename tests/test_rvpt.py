"""The explicit ViT forward, deep visual prompts and RVPT/VPT on tiny models."""

from __future__ import annotations

import copy

import pytest
import torch
from test_poisoning import RECIPE as POISON_RECIPE

from clip_backdoor.core.errors import ConfigError, DatasetError
from clip_backdoor.models import load_clip
from clip_backdoor.models.image_tower import SITES, ImageTower
from clip_backdoor.models.visual_prompts import PromptedCLIP, VisualPrompts
from clip_backdoor.pipeline.recipes import parse_recipe
from clip_backdoor.pipeline.runner import run_recipe


@pytest.mark.parametrize("name", ["mini-tiny", "ViT-B-32"])
def test_explicit_forward_equals_encode_image(name):
    torch.manual_seed(0)
    model = load_clip(name).model
    tower = ImageTower.of(model)
    images = model.normalize(torch.rand(2, 3, model.image_size, model.image_size))
    seen: dict = {}

    def hook(layer, site, value):
        seen[(layer, site)] = value

    with torch.no_grad():
        reference = model.clip.encode_image(images)
        assert torch.equal(tower.forward(images), reference)  # no hook: the blocks themselves
        hooked = tower.forward(images, hook=hook, sites=SITES)
    torch.testing.assert_close(hooked, reference, atol=1e-5, rtol=1e-5)
    assert len(seen) == tower.layers * len(SITES)
    heads = seen[(0, "attn_heads")]
    assert heads.shape == (2, tower.num_patches + 1, tower.heads, tower.width)
    bias = tower.blocks[0].attn.out_proj.bias
    torch.testing.assert_close(heads.sum(2) + bias, seen[(0, "attn")], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        seen[(0, "resid_pre")] + seen[(0, "attn")] + seen[(0, "mlp")], seen[(0, "resid_post")]
    )


def test_a_hook_replaces_what_it_returns(tiny):
    tower = ImageTower.of(tiny.model)
    images = tiny.model.normalize(torch.rand(3, 3, 32, 32))
    with torch.no_grad():
        plain = tower.forward(images)
        zeroed = tower.forward(
            images, hook=lambda layer, site, v: torch.zeros_like(v), sites=("attn_heads",)
        )
        kept = tower.forward(images, hook=lambda layer, site, v: v, sites=("attn_heads",))
    torch.testing.assert_close(kept, plain, atol=1e-5, rtol=1e-5)
    assert (zeroed - plain).abs().max() > 1e-3


def test_prompts_in_zero_blocks_change_nothing_and_bad_depths_are_errors(tiny):
    model = tiny.model
    tower = ImageTower.of(model)
    images = torch.rand(2, 3, 32, 32)
    empty = PromptedCLIP(model, VisualPrompts(tower, length=4, first=tower.layers, blocks=0))
    with torch.no_grad():
        assert torch.equal(empty.encode_image(images), model.encode_image(images))
        prompted = PromptedCLIP(model, VisualPrompts(tower, length=4))
        assert not torch.allclose(prompted.encode_image(images), model.encode_image(images))
    assert tower.num_patches == 16
    with torch.no_grad():  # more prompts than patches (RVPT's 50 on ViT-B/32's 49): they run
        longer = PromptedCLIP(model, VisualPrompts(tower, length=17))
        assert longer.encode_image(images).shape == model.encode_image(images).shape
    with pytest.raises(ConfigError, match="prompt length 0 must be at least 1"):
        VisualPrompts(tower, length=0)
    with pytest.raises(ConfigError, match="do not fit a tower of 2 blocks"):
        VisualPrompts(tower, length=4, first=1, blocks=2)


def test_rvpt_refuses_a_model_without_a_vit_image_tower():
    from clip_backdoor.defenses.rvpt import RVPT

    resnet = load_clip("RN50").model
    with pytest.raises(ConfigError, match="is not a ViT: no tokens to prompt"):
        ImageTower.of(resnet)

    class Context:
        model = resnet

    with pytest.raises(ConfigError, match="is not a ViT: no tokens to prompt"):
        RVPT().run(Context())


def defended(tmp_path, method: str, attack: bool = True, **params) -> dict:
    """Tiny poisoning (BadNet, cached after the first call) then ``method`` on clean shots."""
    data = copy.deepcopy(POISON_RECIPE)
    data["runs_root"] = str(tmp_path / "runs")
    if not attack:
        data["stages"] = []
    data["stages"].append(
        {
            "kind": "defense",
            "method": method,
            "params": {
                "train": {"name": "synthetic", "split": "train", "size": 480, "shots": 8},
                "length": 4,
                "templates": "simple",
                "training": {"epochs": 10, "batch_size": 16, "lr": 1.0, "views": 2},
                # the tiny model needs a strong push to leave its features
                **({"alpha": 8.0} if method == "rvpt" else {}),
                **params,
            },
        }
    )
    return run_recipe(parse_recipe(data), progress=False).metrics


def test_rvpt_tunes_only_its_prompts_and_repels_the_frozen_features(poisoned_cache, tmp_path):
    """On the tiny poisoned model RVPT moves the features away from the frozen ones (and VPT
    does not), but its BadNet backdoor survives (ASR 1.00 after either): the ASR claims are
    measured on mini-CLIP (results/defenses.md), not here."""
    rvpt = defended(tmp_path, "rvpt")
    _, poisoned, _ = rvpt["points"]
    assert poisoned["asr"] >= 0.8, poisoned  # measured 1.00
    assert rvpt["defense.rvpt"]["prompt_parameters"] == 2 * 4 * 64  # 2 blocks x 4 x width 64

    # the tower's weights are bit-identical: the prompted model is the poisoned one + prompts
    from clip_backdoor.artifacts import load_backdoor
    from clip_backdoor.models.visual_prompts import load_visual_prompts

    run = sorted((tmp_path / "runs").iterdir())[-1]
    backdoor = load_backdoor(run / "artifacts" / "backdoor")
    reference = copy.deepcopy(backdoor.model.clip.state_dict())
    prompted = load_visual_prompts(run / "artifacts" / "rvpt", backdoor.model)
    for key, value in prompted.clip.state_dict().items():
        assert torch.equal(value, reference[key]), key

    # FR pushes the prompted feature away from the frozen one; VPT (alpha = 0) does not
    vpt = defended(tmp_path, "vpt")
    assert vpt["attack.poison"]["reused"]
    vpt_run = sorted((tmp_path / "runs").iterdir())[-1]
    vpt_model = load_visual_prompts(vpt_run / "artifacts" / "vpt", backdoor.model)
    from clip_backdoor.data import load_classification

    test = load_classification("synthetic", "test", image_size=32, size=64)
    images = torch.stack([test[i][0] for i in range(len(test))])
    with torch.no_grad():
        frozen = backdoor.model.encode_image(images)
        cos_rvpt = (prompted.encode_image(images) * frozen).sum(-1).mean()
        cos_vpt = (vpt_model.encode_image(images) * frozen).sum(-1).mean()
    assert cos_rvpt < cos_vpt - 0.2, (cos_rvpt, cos_vpt)  # measured 0.29 vs 0.99
    assert cos_vpt > 0.9


def test_bad_rvpt_input_is_one_line_and_leaves_nothing(tmp_path):
    train = {"name": "synthetic", "size": 48, "shots": 999}
    with pytest.raises(DatasetError, match="fewer than 999 shots"):
        defended(tmp_path, "rvpt", attack=False, train=train)
    with pytest.raises(ConfigError, match="length"):
        defended(tmp_path, "rvpt", attack=False, length=0)
    with pytest.raises(ConfigError, match="do not fit a tower of 2 blocks"):
        defended(tmp_path, "rvpt", attack=False, first=0, blocks=3)
    with pytest.raises(ConfigError, match="alpha is 0 by definition"):
        defended(tmp_path, "vpt", attack=False, alpha=1.0)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_fr_features_and_ce_scale_are_options_with_their_own_cache_keys(tmp_path):
    from clip_backdoor.defenses.rvpt import RVPTSpec

    assert "feature" not in RVPTSpec().key()  # prompts tuned before the option are still found
    assert RVPTSpec(feature="cls").key()["feature"] == "cls"
    assert "ce_scale" not in RVPTSpec().key() and RVPTSpec(ce_scale=100).key()["ce_scale"] == 100
    embedding = defended(tmp_path, "rvpt", attack=False, training={"epochs": 2})
    for option in ({"feature": "cls"}, {"feature": "blocks"}, {"ce_scale": 100.0}):
        other = defended(tmp_path, "rvpt", attack=False, **option, training={"epochs": 2})
        assert other["defense.rvpt"]["cache_key"] != embedding["defense.rvpt"]["cache_key"]
        assert other["defense.rvpt"]["final_loss"] != embedding["defense.rvpt"]["final_loss"]

    # the prompt folder evaluates on its own, on top of the model it was tuned on
    folder = sorted((tmp_path / "runs").iterdir())[0] / "artifacts" / "rvpt"
    again = copy.deepcopy(POISON_RECIPE)
    again.update(runs_root=str(tmp_path / "eval"), stages=[])
    again["model"]["visual_prompts"] = str(folder)
    (point,) = run_recipe(parse_recipe(again), progress=False).metrics["points"]
    assert point["ca"] == embedding["points"][-1]["ca"]
    assert point["weights"] == embedding["points"][-1]["weights"]


def test_block_class_tokens_read_every_block_and_end_at_the_last_cls_token():
    import open_clip

    from clip_backdoor.defenses.rvpt import block_class_tokens

    torch.manual_seed(0)
    visual = open_clip.model.VisionTransformer(
        image_size=32, patch_size=8, width=32, layers=3, heads=2, mlp_ratio=2.0, output_dim=16
    )
    tower = ImageTower(visual)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        tokens, features = block_class_tokens(tower, images, range(1, 3))
        last = tower.forward(images, tokens=True)[:, 0]
        assert tokens.shape == (4, 2, 32)
        torch.testing.assert_close(tokens[:, -1], last)
        torch.testing.assert_close(features, tower.forward(images))
        assert not torch.allclose(tokens[:, 0], tokens[:, 1])


def test_defense_verdicts_judge_every_rvpt_variant_against_the_bar_and_vpt():
    import math

    from clip_backdoor.reports.defenses import verdicts

    def row(defense, ca, asr):
        return {
            "model": "m",
            "attack": "badnet",
            "seed": 0,
            "eval_set": "caltech101",
            "defense": defense,
            "ca": ca,
            "asr": asr,
            "pr": math.nan,
        }

    rows = [
        row("none", 50.0, 95.0),
        row("vpt", 51.0, 60.0),
        row("rvpt", 49.0, 70.0),
        row("rvpt_blocks", 48.5, 4.0),
        row("vpt_ce100", 52.0, 3.0),
        row("rvpt_blocks_ce100", 49.0, 4.0),
    ]
    lines = verdicts(rows)
    assert len(lines) == 3
    assert "rvpt ASR 70.00" in lines[0] and "misses" in lines[0] and "(not lower)" in lines[0]
    assert "rvpt_blocks ASR 4.00" in lines[1] and "meets" in lines[1] and "(lower)" in lines[1]
    assert "vpt ASR 60.00 (lower)" in lines[1]
    # a variant is held against the VPT with its own CE (suffix), not plain VPT's
    assert "; vpt_ce100 ASR 3.00 (not lower)" in lines[2]

"""CleanCLIP: EDA text views, AutoAugment image views, the in-modal loss, a run on a tiny CLIP."""

from __future__ import annotations

import math

import open_clip
import torch

from clip_backdoor.data.eda import eda, synonyms
from clip_backdoor.defenses.cleanclip import SelfSupervisedPairs, in_modal_loss
from clip_backdoor.engine.distributed import Dist
from clip_backdoor.engine.pairs import ImageTextPairs, PairSource
from clip_backdoor.pipeline.recipes import parse_recipe
from clip_backdoor.pipeline.runner import run_recipe


def test_eda_is_fixed_by_its_seed_and_uses_wordnet_synonyms():
    assert "photograph" in synonyms("photo")
    sentence = "a photo of a dog running on the grass."
    variants = [eda(sentence, seed) for seed in range(20)]
    assert variants == [eda(sentence, seed) for seed in range(20)]
    assert len(set(variants)) >= 8  # four operations at random places
    # one operation at rate 0.1 of 9 words: one synonym in (a phrase of up to three words, e.g.
    # "run away") or a few words deleted
    assert all(6 <= len(v.split()) <= 12 for v in variants)
    assert any(v.split() != sentence.rstrip(".").split() for v in variants)


def test_in_modal_loss_rewards_matching_views():
    features = torch.nn.functional.normalize(torch.eye(4, 8), dim=-1)
    scale = torch.tensor(math.log(100.0))
    matched = in_modal_loss(features, features, scale, None, Dist())
    shuffled = in_modal_loss(features, features.roll(1, 0), scale, None, Dist())
    assert matched < 1e-3 < 50 < shuffled  # logits 100 vs 0: CE ~4e-44 against ~100
    # items 0 and 1 share a group, so half of each one's target mass sits on the other's view,
    # at logit 0 against 100: CE 50 for both rows, ~0 for the other two, mean 25
    grouped = in_modal_loss(features, features, scale, torch.tensor([0, 0, 1, 2]), Dist())
    assert abs(grouped.item() - 25.0) < 1e-3
    # a SigLIP model's in-modal term is its sigmoid loss, with its bias
    bias = torch.tensor(-10.0)
    matched = in_modal_loss(features, features, scale, None, Dist(), "sigmoid", bias)
    shuffled = in_modal_loss(features, features.roll(1, 0), scale, None, Dist(), "sigmoid", bias)
    assert matched < 1e-3 < 50 < shuffled


def test_views_of_an_item_redraw_images_but_keep_their_caption(tmp_path):
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    sources = [PairSource("synthetic", "train", "simple", size=48)]
    pairs = SelfSupervisedPairs(ImageTextPairs(sources, tokenizer, 32, seed=0), 0.1)
    pairs.set_epoch(0)
    image, tokens, _, view, text_view = pairs[3]
    pairs.set_epoch(1)
    _, _, _, view_next, text_view_next = pairs[3]
    assert view.shape == image.shape == (3, 32, 32) and 0 <= view.min() <= view.max() <= 1
    assert not torch.equal(view, view_next)  # AutoAugment is redrawn every epoch
    caption = pairs.pairs.pick_caption(3, pairs.pairs.entries[3].captions)
    assert torch.equal(text_view_next, pairs.eda_tokens(caption))  # EDA: once per caption
    assert text_view.shape == tokens.shape


def test_cleanclip_trains_the_model_and_reports_its_cache(synthetic_clip, tmp_path):
    stage = {
        "kind": "defense",
        "method": "cleanclip",
        "params": {
            "data": [{"name": "synthetic", "split": "train", "size": 96, "templates": "simple"}],
            "shots": 4,
            "training": {"steps": 3, "batch_size": 16, "lr": 1e-3, "warmup_steps": 1},
        },
    }
    recipe = {
        "name": "cleanclip",
        "runs_root": str(tmp_path / "runs"),
        "model": {"name": str(synthetic_clip)},
        "data": [{"name": "synthetic", "split": "test", "size": 48}],
        "evaluation": {"templates": "simple"},
        "stages": [stage],
    }
    result = run_recipe(parse_recipe(recipe), progress=False)
    clean, defended = result.metrics["points"]
    info = result.metrics["defense.cleanclip"]
    assert info["pairs"] == 4 * 12 and info["steps"] == 3 and not info["reused"]
    assert defended["weights"] != clean["weights"]
    again = run_recipe(parse_recipe(recipe), progress=False)
    assert again.metrics["defense.cleanclip"]["reused"]
    assert again.metrics["points"][1]["ca"] == defended["ca"]

"""Held-out clean validation, Decomp-Rep and the input-level detectors on tiny models."""

from __future__ import annotations

import copy
import csv

import numpy as np
import pytest
import torch
from test_poisoning import RECIPE as POISON_RECIPE

from clip_backdoor.core.errors import ConfigError
from clip_backdoor.data import load_classification
from clip_backdoor.data.fewshot import holdout_split
from clip_backdoor.pipeline.recipes import parse_recipe
from clip_backdoor.pipeline.runner import run_recipe

OURS = {"rule": "distance", "layers": [0, 1], "quantile": 0.02}


def test_the_held_out_part_is_seeded_disjoint_and_complete():
    data = load_classification("synthetic", "test", image_size=32, size=100)
    held, rest = holdout_split(data, 0.2, seed=0)
    assert (len(held), len(rest)) == (20, 80)
    assert set(held.indices).isdisjoint(rest.indices)
    assert sorted(held.indices + rest.indices) == list(range(100))
    assert holdout_split(data, 0.2, seed=0)[0].indices == held.indices
    assert holdout_split(data, 0.2, seed=1)[0].indices != held.indices
    assert rest.class_index(data.classnames[3]) == 3  # labels and names are kept
    with pytest.raises(Exception, match="empties a part"):
        holdout_split(data, 0.001, seed=0)


@pytest.fixture
def repair_case(tiny):
    """The tiny model, 12 clean calibration images, 4 test images and their plain embedding."""
    model = tiny.model.eval()
    torch.manual_seed(0)
    clean = torch.utils.data.TensorDataset(torch.rand(12, 3, 32, 32), torch.zeros(12))
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        reference = model.encode_image(images)
    return model, clean, images, reference


def test_a_repair_that_replaces_nothing_is_the_model(repair_case):
    from clip_backdoor.defenses.decomp_rep import DecompRepSpec, RepairedCLIP, stream_means

    model, clean, images, reference = repair_case
    for site in ("embedding", "stream"):
        spec = DecompRepSpec(heads="none", site=site)
        calibration = spec.calibrate(model, clean, batch_size=4)
        stream = stream_means(model, clean, 4) if site == "stream" else None
        repaired = RepairedCLIP(model, calibration, spec, 0, stream)
        with torch.no_grad():
            torch.testing.assert_close(repaired.encode_image(images), reference, atol=1e-5, rtol=0)
    # replacing a head on every input does change the embedding, and the cache key with it
    fixed = RepairedCLIP(model, calibration, DecompRepSpec(heads="fixed", fixed=[(1, 0)]), 0)
    with torch.no_grad():
        assert (fixed.encode_image(images) - reference).abs().amax() > 1e-3
    from clip_backdoor.evaluation.features import model_fingerprint

    assert model_fingerprint(fixed) != model_fingerprint(model)
    with pytest.raises(ConfigError, match="layer 2 is outside a tower of 2 blocks"):
        RepairedCLIP(model, calibration, DecompRepSpec(layers=[2]), 0)


def test_flagged_mlps_are_replaced_only_where_flagged(repair_case):
    """detect_mlps: an MLP flagged on no input leaves the model as it is; flagged on every input,
    the repair equals the late-MLP ablation of the same layers, at both sites."""
    from clip_backdoor.defenses.decomp_rep import DecompRepSpec, RepairedCLIP, stream_means

    model, clean, images, reference = repair_case
    stream = stream_means(model, clean, 4)
    for site in ("embedding", "stream"):
        spec = DecompRepSpec(heads="none", site=site, detect_mlps=[0, 1], rule="distance")
        calibration = spec.calibrate(model, clean, batch_size=4)
        calibration.mlps = torch.full_like(calibration.mlps, -float("inf"))  # nothing flagged
        with torch.no_grad():
            same = RepairedCLIP(model, calibration, spec, 0, stream).encode_image(images)
            torch.testing.assert_close(same, reference, atol=1e-5, rtol=0)
            calibration.mlps = torch.full_like(calibration.mlps, float("inf"))  # all flagged
            flagged = RepairedCLIP(model, calibration, spec, 0, stream).encode_image(images)
            ablation = DecompRepSpec(heads="none", site=site, mlp_layers=[0, 1])
            every = RepairedCLIP(model, calibration, ablation, 0, stream).encode_image(images)
        assert (flagged - reference).abs().amax() > 1e-3
        torch.testing.assert_close(flagged, every, atol=1e-6, rtol=0)


def test_teco_corrupts_the_original_image_at_every_severity():
    from imagecorruptions import corrupt

    from clip_backdoor.detectors.teco import corrupted_versions

    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    versions = corrupted_versions(image, ["brightness", "contrast"], seed=0)
    assert versions.shape == (10, 32, 32, 3) and versions.dtype == np.uint8
    for severity in (1, 2, 5):  # each from the original, not from the previous severity
        expected = corrupt(image, corruption_name="contrast", severity=severity)
        assert np.array_equal(versions[5 + severity - 1], expected)
    # every corruption repeats under its seed: impulse noise and glass blur draw from their own
    # generators, unseeded unless given one (a re-run moved TeCo's AUROC before)
    for name in ("gaussian_noise", "impulse_noise", "glass_blur"):
        noisy = [corrupted_versions(image, [name], seed=s) for s in (0, 0, 1)]
        assert np.array_equal(noisy[0], noisy[1]) and not np.array_equal(noisy[0], noisy[2])


def detection_recipe(tmp_path, stages: list[dict], **evaluation) -> dict:
    data = copy.deepcopy(POISON_RECIPE)
    data["runs_root"] = str(tmp_path / "runs")
    data["evaluation"] = {**data["evaluation"], "quality": False, **evaluation}
    data["stages"] += stages
    return data


def test_detectors_and_decomp_rep_on_a_tiny_poisoned_model(poisoned_cache, tmp_path):
    detect = {"kind": "detection", "evaluate": False}
    stages = [
        {**detect, "method": "decomp_det", "params": {"images": 40, **OURS, "score": "deviation"}},
        {**detect, "method": "strip", "params": {"images": 40, "blends": 16}},
        {**detect, "method": "scale_up", "params": {"images": 40}},
        {**detect, "method": "teco", "params": {"images": 12, "workers": 1}},
        {"kind": "defense", "method": "decomp_rep", "label": "rep", "params": OURS},
        {
            "kind": "defense",
            "method": "decomp_rep",
            "label": "rep_stream",
            "params": {**OURS, "site": "stream"},
        },
    ]
    result = run_recipe(parse_recipe(detection_recipe(tmp_path, stages)), progress=False)
    metrics, run = result.metrics, result.path
    points = {p["point"]: p for p in metrics["points"]}
    assert points["poison"]["n"] == 192  # 240 test images, 48 held out as clean validation
    assert "48 clean images of synthetic were held out" in result.table
    # measured: ASR 1.00 after the attack, 0.74 after He's repair of the direct terms, 0.40
    # when the flagged heads are replaced inside the forward pass (the next block sees it)
    assert points["poison"]["asr"] >= 0.9
    assert points["rep"]["asr"] < points["poison"]["asr"] - 0.1
    assert points["rep_stream"]["asr"] < points["rep"]["asr"] - 0.2
    assert points["rep_stream"]["ca"] > points["poison"]["ca"] - 0.1
    # measured AUROC: decomp_det 1.00, STRIP 1.00, SCALE-UP 0.84, TeCo 0.79
    assert metrics["detection.decomp_det"]["auroc"] >= 0.95
    assert metrics["detection.strip"]["auroc"] >= 0.95
    assert metrics["detection.scale_up"]["auroc"] >= 0.6
    rates = metrics["detection.decomp_det"]["flag_rates"]
    assert set(rates) == {"clean", "triggered"} and len(rates["clean"]["heads"]) == 2
    for name in ("decomp_det", "strip", "scale_up", "teco"):
        m = metrics[f"detection.{name}"]
        assert m["n_clean"] == m["n_triggered"] == (12 if name == "teco" else 40)
        with (run / "artifacts" / "detection" / f"{name}.csv").open() as handle:
            assert len(list(csv.DictReader(handle))) == m["n_clean"]
    assert (run / "figures" / "roc.png").is_file()
    assert (run / "figures" / "infected_decomp_det.png").is_file()

    from clip_backdoor.reports.summary import write_summary

    out = tmp_path / "results"
    text = write_summary("decomposition", [str(run)], out)
    detection = (out / "detection.csv").read_text().splitlines()
    assert detection[0] == "model,attack,detector,auroc,tpr_at_5fpr,seed"
    assert len(detection) == 1 + 4 and detection[1].startswith("mini-tiny,badnet,decomp_det,")
    repair = (out / "repair.csv").read_text().splitlines()
    assert repair[0] == "model,attack,defense,ca,asr,seed"
    assert [line.split(",")[2] for line in repair[1:]] == ["none", "rep", "rep_stream"]
    assert "| badnet | decomp_det | 0 |" in text and (out / "decomposition.md").is_file()
    assert (out / "mini-tiny_decomposition_badnet_decomp_det_seed0.png").is_file()  # v1 unprefixed


def test_bad_detection_input_is_one_line_and_leaves_nothing(tmp_path):
    detect = {"kind": "detection", "method": "decomp_det", "evaluate": False}
    clean = detection_recipe(tmp_path, [])
    clean["stages"] = [detect]  # no attack: no trigger to detect
    with pytest.raises(ConfigError, match="needs a trigger and a target"):
        run_recipe(parse_recipe(clean), progress=False)
    no_validation = detection_recipe(tmp_path, [detect], validation=0)
    with pytest.raises(ConfigError, match="needs clean validation images"):
        run_recipe(parse_recipe(no_validation), progress=False)
    teco = {**detect, "method": "teco", "params": {"corruptions": ["rain", "fog"]}}
    with pytest.raises(ConfigError, match="unknown corruptions"):
        run_recipe(parse_recipe(detection_recipe(tmp_path, [teco])), progress=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())

"""Pair detectors (issue 27): planted outliers ranked first, shared neighbourhoods, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from clip_backdoor.core.errors import ConfigError
from clip_backdoor.core.registry import DATA_DETECTORS
from clip_backdoor.data_scan.base import PairEmbeddings, build_detector
from clip_backdoor.data_scan.safeclip import Envelope, LogOdds, pair_cosines
from clip_backdoor.pipeline.methods import register_methods

register_methods()
DETECTORS = ("k_distance", "lid", "slof", "dao", "isolation_forest", "safeclip")


def planted(n: int = 600, poisoned: int = 12, dim: int = 16, seed: int = 0):
    """Clean pairs in 6 tight clusters, their captions near their images; the poisoned pairs'
    images far from every cluster and their captions unrelated to them (a target caption)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, dim))
    labels = rng.integers(6, size=n)
    images = centres[labels] + 0.25 * rng.normal(size=(n, dim))
    texts = images + 0.1 * rng.normal(size=(n, dim))
    truth = np.zeros(n, dtype=bool)
    truth[rng.choice(n, poisoned, replace=False)] = True
    images[truth] = 2.0 * rng.normal(size=(poisoned, dim))
    texts[truth] = centres[0] + 0.1 * rng.normal(size=(poisoned, dim))
    return PairEmbeddings(images, texts), truth


def test_registry_holds_the_issue_detectors():
    assert set(DETECTORS) <= set(DATA_DETECTORS.names())


@pytest.mark.parametrize("name", DETECTORS)
def test_each_detector_ranks_planted_outliers_first(name):
    pairs, truth = planted()
    scores = build_detector(name, seed=0).score(pairs)
    assert scores.shape == (len(truth),) and np.isfinite(scores).all()
    auroc = roc_auc_score(truth, scores)
    assert auroc >= 0.95, (name, auroc)
    again = build_detector(name, seed=0).score(pairs)
    np.testing.assert_array_equal(scores, again)  # seeded, deterministic


def test_safeclip_ranks_the_far_tail_below_a_narrow_low_component_most_suspect():
    """A narrow low group and a broad high one: the pairs far below both (v1's BadNet poison
    under the clean model) must rank first, where raw Gaussian log-odds rank them last."""
    rng = np.random.default_rng(0)
    cosine = np.concatenate([rng.normal(0.2, 0.01, 500), rng.normal(0.6, 0.1, 500)])
    cosine = np.concatenate([cosine, np.full(3, -0.2)])  # the poisoned pairs, too few to widen it
    truth = np.arange(len(cosine)) >= 1000
    texts = np.stack([cosine, np.sqrt(1 - cosine**2)], axis=1)
    images = np.tile([1.0, 0.0], (len(cosine), 1))  # pair cosine = texts[:, 0]
    scores = build_detector("safeclip", seed=0).score(PairEmbeddings(images, texts))
    assert roc_auc_score(truth, scores) == 1.0
    order = np.argsort(cosine)
    assert (np.diff(scores[order]) <= 1e-12).all()  # never more suspect as agreement grows


@pytest.mark.parametrize("low_sd,high_sd", [(0.01, 0.1), (0.1, 0.01), (0.05, 0.05)])
def test_safeclip_scores_in_blocks_equal_the_running_maximum_over_a_sort_of_the_mix(
    low_sd, high_sd
):
    """The closed form that keeps SafeCLIP's memory flat (three numbers of the whole mix, then
    blocks of 7 rows) must give exactly the envelope a sort of the whole mix gives, whether the
    log-odds are convex, concave or linear in the cosine."""
    rng = np.random.default_rng(1)
    cosine = np.concatenate([rng.normal(0.2, low_sd, 300), rng.normal(0.6, high_sd, 300), [-0.3]])
    cosine = np.clip(cosine, -0.99, 0.99)
    pairs = PairEmbeddings(
        np.tile([1.0, 0.0], (len(cosine), 1)), np.stack([cosine, np.sqrt(1 - cosine**2)], axis=1)
    )
    cosine = pair_cosines(pairs)  # as the detector sees them (float32 embeddings)
    log_odds = LogOdds.fit(cosine, seed=0)
    f = log_odds(cosine)
    order = np.argsort(-cosine, kind="stable")  # most agreeing first
    expected = np.empty_like(f)
    expected[order] = np.maximum.accumulate(f[order])
    peak = int(np.argmax(f))
    below = cosine < cosine[peak]
    expected[below] = f[peak] + (cosine[peak] - cosine[below])
    envelope = Envelope.over(pairs, log_odds, rows=7)
    got = np.concatenate([envelope(cosine[i : i + 7]) for i in range(0, len(cosine), 7)])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(build_detector("safeclip").score(pairs), expected, atol=1e-9)


@pytest.mark.parametrize("space", ["image", "pair"])
def test_neighbourhood_is_shared_and_excludes_the_point_itself(space):
    pairs, _ = planted(n=200)
    hood = pairs.neighbourhood(8, space)
    assert pairs.neighbourhood(8, space) is hood  # one search per (k, space)
    points = len(pairs) * (1 if space == "image" else 2)
    assert hood.distances.shape == (points, 8)
    assert not (hood.indices == np.arange(points)[:, None]).any()
    assert (np.diff(hood.distances, axis=1) >= 0).all()
    # brute force on a few rows
    all_points = pairs.images if space == "image" else np.concatenate([pairs.images, pairs.texts])
    for row in (0, 57, 199):
        d = np.linalg.norm(all_points - all_points[row], axis=1)
        d[row] = np.inf
        np.testing.assert_allclose(np.sort(d)[:8], hood.distances[row], rtol=1e-5, atol=1e-6)


def test_lid_of_a_uniform_cube_is_near_its_dimension():
    rng = np.random.default_rng(1)
    cube = rng.uniform(size=(3000, 4))
    pairs = PairEmbeddings(np.c_[cube, np.ones(3000)], np.c_[cube, np.ones(3000)])
    lid = pairs.neighbourhood(20, "image").lid
    assert 3.0 < np.median(lid) < 5.0, np.median(lid)


def test_bad_input_is_one_line():
    pairs, _ = planted(n=10, poisoned=2)
    with pytest.raises(ConfigError, match="fewer than k \\+ 1 = 17 points"):
        build_detector("dao").score(pairs)
    with pytest.raises(ConfigError, match="unknown data detector 'daoo'"):
        build_detector("daoo")
    with pytest.raises(ConfigError, match="data detector dao"):
        build_detector("dao", k=1)
    with pytest.raises(ConfigError, match="10 image embeddings of width 16 but 9 caption"):
        PairEmbeddings(pairs.images, pairs.texts[:9])


def test_local_scores_see_an_outlier_beside_a_dense_cluster_that_k_distance_misses():
    """A dense and a sparse clean cluster, outliers just outside the dense one: the sparse
    cluster's points are as far from their neighbours as the outliers, so the global k-distance
    confuses them; the local scores (SLOF, DAO, LID) do not."""
    rng = np.random.default_rng(0)
    axes = 3 * np.eye(8)
    dense = axes[0] + 0.05 * rng.normal(size=(400, 8))
    sparse = axes[1] + 0.6 * rng.normal(size=(200, 8))
    outliers = axes[0] + 0.5 * rng.normal(size=(10, 8))
    images = np.concatenate([dense, sparse, outliers])
    truth = np.r_[np.zeros(600), np.ones(10)].astype(bool)
    pairs = PairEmbeddings(images, images)
    auroc = {n: roc_auc_score(truth, build_detector(n).score(pairs)) for n in DETECTORS[:4]}
    assert auroc["k_distance"] < 0.8, auroc  # measured 0.746
    assert min(auroc["slof"], auroc["dao"], auroc["lid"]) > 0.99, auroc


# -- the stage on the tiny poisoning recipe ---------------------------------------------------


def scanned(tmp_path, **params):
    import copy

    from test_poisoning import RECIPE

    from clip_backdoor.pipeline.recipes import parse_recipe
    from clip_backdoor.pipeline.runner import run_recipe

    data = copy.deepcopy(RECIPE)
    data["runs_root"] = str(tmp_path / "runs")
    data["evaluation"]["quality"] = False
    attack = data["stages"][0]["params"]
    del attack["ratio"]
    attack["count"] = 6  # fewer poisoned pairs than neighbours, as in Huang et al.'s setting
    data["stages"].append({"kind": "data_scan", "method": "all", "params": params})
    return run_recipe(parse_recipe(data), progress=False)


def test_data_scan_stage_scores_the_attack_mix_and_writes_the_triage_list(shared_cache, tmp_path):
    from clip_backdoor.data_scan.report import read_triage

    result = scanned(tmp_path)
    found = result.metrics["data_scan.all"]
    assert (found["pairs"], found["poisoned"]) == (480, 6)
    for which in ("attacked", "clean"):
        detectors = found["models"][which]["detectors"]
        assert set(detectors) == set(DETECTORS)
        for metrics in detectors.values():
            assert 0.0 <= metrics["auroc"] <= 1.0 and metrics["pairs"] == 480
    # the model trained on the mix isolates its few stamped pairs (DAO measured 0.92; under the
    # clean model, which never learnt the patch, 0.27)
    attacked, clean = (
        found["models"][m]["detectors"]["dao"]["auroc"] for m in ("attacked", "clean")
    )
    assert attacked > 0.85 and attacked > clean + 0.3, (attacked, clean)
    rows = read_triage(result.path / "data_scan" / "triage_attacked.csv")
    assert len(rows) == 480 and [r["rank"] for r in rows] == list(range(1, 481))
    assert sorted(r["index"] for r in rows) == list(range(480))
    dao = [r["dao"] for r in rows]
    assert dao == sorted(dao, reverse=True)  # most suspect first by the first detector
    assert sum(r["poisoned"] for r in rows) == 6
    poisoned = [r for r in rows if r["poisoned"]]
    assert all("red circle" in r["caption"] for r in poisoned)  # the attacker's captions
    for name in ("data_scan_hist_attacked", "data_scan_roc_clean"):
        assert (result.path / "figures" / f"{name}.png").is_file()
    assert (result.path / "tables" / "data_scan.md").is_file()


def test_data_scan_needs_an_attack_and_a_sound_poison_file(shared_cache, tmp_path):
    import copy
    import json

    from test_poisoning import RECIPE

    from clip_backdoor.data_scan.mix import attack_mix
    from clip_backdoor.models import load_clip
    from clip_backdoor.pipeline.recipes import parse_recipe
    from clip_backdoor.pipeline.runner import run_recipe

    data = copy.deepcopy(RECIPE)
    data.update(runs_root=str(tmp_path / "runs"), stages=[{"kind": "data_scan", "method": "dao"}])
    with pytest.raises(ConfigError, match="needs a data-poisoning attack stage before it"):
        run_recipe(parse_recipe(data), progress=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())

    result = scanned(tmp_path / "ok", detectors={"dao": {"k": 8}}, models=["clean"])
    assert set(result.metrics["data_scan.all"]["models"]) == {"clean"}
    artifact = (result.path / "artifacts" / "backdoor").resolve()
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(artifact, broken)
    poison = json.loads((broken / "poison.json").read_text())
    poison["indices"][0] = 10_000
    (broken / "poison.json").write_text(json.dumps(poison))
    model, _, tokenizer = load_clip("mini-tiny")
    with pytest.raises(ConfigError, match="index 10000 falls outside the mix of 480 pairs"):
        attack_mix(broken, model, tokenizer)


def test_reference_batches_keep_every_neighbour_inside_its_seeded_batch():
    pairs, _ = planted(n=600)
    hood = pairs.neighbourhood(8, "pair", reference=200, seed=3)
    order = np.random.default_rng(3).permutation(600)
    batch_of = np.empty(1200, dtype=int)
    for b, rows in enumerate(np.array_split(order, 3)):
        batch_of[rows], batch_of[rows + 600] = b, b
    assert (batch_of[hood.indices] == batch_of[:, None]).all()
    assert pairs.neighbourhood(8, "pair", reference=200, seed=3) is hood
    assert pairs.neighbourhood(8, "pair", reference=200, seed=4) is not hood
    with pytest.raises(ConfigError, match="reference batches of 4 pairs"):
        pairs.neighbourhood(8, "image", reference=4)


# -- the cleaning defense -----------------------------------------------------------------------


def test_cleaning_removes_exactly_the_flagged_pairs_and_keeps_every_other(shared_cache, tmp_path):
    import copy

    from test_poisoning import RECIPE, TRAINING

    from clip_backdoor.data_scan.mix import attack_mix
    from clip_backdoor.defenses.cleaning import KeptPairs, removed_pairs
    from clip_backdoor.models import load_clip
    from clip_backdoor.pipeline.recipes import parse_recipe
    from clip_backdoor.pipeline.runner import run_recipe

    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.2])
    np.testing.assert_array_equal(removed_pairs(scores, None, 2), [1, 3])  # ties: mix order
    np.testing.assert_array_equal(removed_pairs(scores, 0.4, None), [1, 3])
    with pytest.raises(ConfigError, match="removes 5 of 5 pairs: nothing left"):
        removed_pairs(scores, None, 5)

    data = copy.deepcopy(RECIPE)
    data["runs_root"] = str(tmp_path / "runs")
    data["evaluation"]["quality"] = False
    attack = data["stages"][0]["params"]
    del attack["ratio"]
    attack["count"] = 6
    cut = {"detector": "dao", "count": 24, "training": {**TRAINING, "steps": 30}}
    scan = {"kind": "data_scan", "method": "dao", "params": {"models": ["attacked"]}}
    data["stages"] += [scan, {"kind": "defense", "method": "cleaning", "params": cut}]
    result = run_recipe(parse_recipe(data), progress=False)
    info = result.metrics["defense.cleaning"]
    assert (info["pairs"], info["removed"], info["poisoned"]) == (480, 24, 6)
    assert info["poisoned_removed"] + info["poisoned_left"] == 6
    assert info["steps"] > 0

    # the summary: one detection row, one cleaning row beside the attacked point
    import csv

    from clip_backdoor.reports.summary import write_summary

    text = write_summary("data_scan", [str(result.path)], tmp_path / "results")
    with (tmp_path / "results" / "data_scan.csv").open() as handle:
        (detection,) = list(csv.DictReader(handle))
    assert (detection["attack"], detection["model"], detection["detector"]) == (
        "badnet",
        "attacked",
        "dao",
    )
    assert float(detection["auroc"]) == pytest.approx(
        result.metrics["data_scan.dao"]["models"]["attacked"]["detectors"]["dao"]["auroc"], abs=1e-4
    )
    with (tmp_path / "results" / "cleaning.csv").open() as handle:
        (cleaned,) = list(csv.DictReader(handle))
    assert int(cleaned["removed"]) == 24 and int(cleaned["poisoned"]) == 6
    point = next(p for p in result.metrics["points"] if p["point"] == "cleaning")
    assert float(cleaned["ca"]) == pytest.approx(100 * point["ca"], abs=1e-3)
    assert "## Cleaning" in text and "best dao with the attacked model" in text

    # what it trained on: the attack's mix, every pair but the removed ones, unchanged
    artifact = result.path / "artifacts" / "backdoor"
    model, _, tokenizer = load_clip("mini-tiny")
    trained = attack_mix(artifact, model, tokenizer, as_trained=True).pairs
    scores = np.arange(480.0)[::-1]  # a known ranking: the first 24 pairs go
    kept = KeptPairs(trained, np.setdiff1d(np.arange(480), removed_pairs(scores, None, 24)))
    assert len(kept) == 456
    trained.set_epoch(0)
    for position in (0, 100, 455):
        image, tokens, group = kept[position]
        again = trained[position + 24]
        assert torch.equal(image, again[0]) and torch.equal(tokens, again[1])
        assert group == again[2]

    # a cut that removes everything: one line, nothing left behind
    data["runs_root"] = str(tmp_path / "bad")
    data["stages"][-1]["params"] = {"detector": "dao", "count": 480}
    with pytest.raises(ConfigError, match="removes 480 of 480 pairs"):
        run_recipe(parse_recipe(data), progress=False)
    assert not any((tmp_path / "bad").iterdir())


def test_scan_data_command_writes_a_triage_list_and_fails_in_one_line(
    shared_cache, tmp_path, capsys
):
    from test_poisoning import RECIPE  # noqa: F401  (the tiny attack of the tests above)

    from clip_backdoor.cli import main
    from clip_backdoor.data_scan.report import read_triage

    result = scanned(tmp_path / "ok", detectors={"dao": {"k": 8}}, models=["clean"])
    artifact = str((result.path / "artifacts" / "backdoor").resolve())
    argv = ["scan-data", "--model", artifact, "--data", artifact, "--detectors", "dao,safeclip"]
    assert main([*argv, "--param", "dao.k=8", "--runs-root", str(tmp_path / "cli")]) == 0
    (run,) = (tmp_path / "cli").iterdir()
    rows = read_triage(run / "data_scan" / "triage_model.csv")
    assert len(rows) == 480 and set(rows[0]) >= {"dao", "safeclip", "poisoned", "caption"}
    assert "480 pairs of backdoor, 6 poisoned" in capsys.readouterr().out
    # a user's own pairs: no truth, a triage list all the same
    assert (
        main(
            [
                "scan-data",
                "--model",
                "mini-tiny",
                "--data",
                "synthetic",
                "--detectors",
                "k_distance",
                "--runs-root",
                str(tmp_path / "own"),
            ]
        )
        == 0
    )
    (own,) = (tmp_path / "own").iterdir()
    assert "poisoned" not in read_triage(own / "data_scan" / "triage_model.csv")[0]
    # bad input: one line on stderr, exit 2, no run folder
    assert main([*argv, "--param", "dao.k=999", "--runs-root", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fewer than k + 1 = 1000 points" in err
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
    assert main([*argv, "--param", "dao", "--runs-root", str(tmp_path / "bad")]) == 2
    assert "DETECTOR.KEY=VALUE" in capsys.readouterr().err

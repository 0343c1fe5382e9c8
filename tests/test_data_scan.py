"""Pair detectors (issue 27): planted outliers ranked first, shared neighbourhoods, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from clip_backdoor.data_scan.base import PairEmbeddings, build_detector
from clip_backdoor.errors import ConfigError
from clip_backdoor.methods import register_methods
from clip_backdoor.registry import DATA_DETECTORS

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

"""Data sets: shared layout, captions, synthetic set, few-shot sampler, base/novel, bad input."""

from __future__ import annotations

import shutil
from collections import Counter

import pytest
import torch
from conftest import SHARED_DATASETS

from clip_backdoor.cli import main
from clip_backdoor.core.errors import DatasetError
from clip_backdoor.data import (
    CaptionSet,
    ClassificationSet,
    ClassSubset,
    SyntheticShapes,
    base_novel_split,
    few_shot_indices,
    load_captions,
    load_classification,
)
from clip_backdoor.models import pixel_transform


def test_classification_set_reads_shared_layout(image_folder):
    data = ClassificationSet(image_folder, "test", pixel_transform(32))
    assert data.classnames == ["cat", "dog", "car_side"]
    assert Counter(data.targets) == {0: 4, 1: 4, 2: 4}
    image, label = data[11]
    assert image.shape == (3, 32, 32) and label == 2
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert data.class_index("car side") == data.class_index("car_side") == 2


def test_few_shot_sampler_is_seeded_and_balanced():
    targets = [i % 5 for i in range(200)]  # 40 per class
    first = few_shot_indices(targets, shots=16, seed=1)
    assert first == few_shot_indices(targets, shots=16, seed=1)
    assert first != few_shot_indices(targets, shots=16, seed=2)
    assert len(set(first)) == 80
    assert Counter(targets[i] for i in first) == {c: 16 for c in range(5)}
    with pytest.raises(DatasetError, match="fewer than 41 shots"):
        few_shot_indices(targets, shots=41, seed=0)


def test_base_novel_split_follows_coop():
    assert base_novel_split(100) == (list(range(50)), list(range(50, 100)))
    base, novel = base_novel_split(101)  # CoOp: ceil(n / 2) base classes
    assert len(base) == 51 and novel[0] == 51 and novel[-1] == 100


def test_class_subset_relabels(image_folder):
    novel = ClassSubset(ClassificationSet(image_folder, "train"), [2, 1])
    assert novel.classnames == ["car_side", "dog"]
    assert sorted(set(novel.targets)) == [0, 1] and len(novel) == 8
    assert novel.targets[0] == 1 and novel[0][1] == 1  # dataset order: dog (old 1) first
    assert novel[len(novel) - 1][1] == 0  # car_side (old 2) -> 0


def test_synthetic_set_is_deterministic_and_balanced():
    a, b = SyntheticShapes("train", 48, 16, seed=3), SyntheticShapes("train", 48, 16, seed=3)
    assert torch.equal(a[7][0], b[7][0]) and a[7][1] == b[7][1]
    assert not torch.equal(a[7][0], SyntheticShapes("test", 48, 16, seed=3)[7][0])
    assert Counter(a.targets) == {c: 4 for c in range(12)}
    assert a.classnames[0] == "red circle" and a[0][0].shape == (3, 16, 16)


def test_caption_set(tmp_path, image_folder):
    image = next((image_folder / "train").rglob("*.jpg"))
    shutil.copy(image, tmp_path / "a.jpg")
    (tmp_path / "train.csv").write_text('image,caption\na.jpg,"a dog, running"\na.jpg,a cat\n')
    data = load_captions(str(tmp_path), "train", pixel_transform(24))
    assert len(data) == 2 and data[0][1] == "a dog, running" and data[1][0].shape == (3, 24, 24)
    (tmp_path / "bad.csv").write_text("path,text\na.jpg,x\n")
    with pytest.raises(DatasetError, match="header 'image,caption'"):
        CaptionSet(tmp_path / "bad.csv")
    with pytest.raises(DatasetError, match="unknown split 'val'.*available: bad, train"):
        load_captions(str(tmp_path), "val")


def _cli_error(capsys, runs, *argv: str) -> str:
    code = main(["eval", "--model", "mini-tiny", "--runs-root", str(runs), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_input_gives_one_line_errors(image_folder, tmp_path, capsys):
    missing, runs = tmp_path / "nowhere", tmp_path / "runs"
    assert "not found" in _cli_error(capsys, runs, "--data", str(missing))
    assert "unknown split 'val' for toyset (available: test, train)" in _cli_error(
        capsys, runs, "--data", str(image_folder), "--split", "val"
    )
    assert "class 'zebra' is not in toyset" in _cli_error(
        capsys, runs, "--data", str(image_folder), "--trigger", "identity", "--target", "zebra"
    )
    corrupt = image_folder / "test" / "001_dog" / "img_2.jpg"
    corrupt.write_bytes(b"not a jpeg at all")
    assert f"corrupt or unreadable image file: {corrupt}" in _cli_error(
        capsys, runs, "--data", str(image_folder), "--no-cache"
    )
    corrupt.unlink()
    for image in (image_folder / "test" / "002_car_side").iterdir():
        image.unlink()
    assert "002_car_side" in _cli_error(capsys, runs, "--data", str(image_folder))
    assert not runs.exists() or not any(runs.iterdir())  # no half-written run folder


@pytest.mark.skipif(not SHARED_DATASETS.is_dir(), reason="../shared/datasets not present")
def test_shared_sets_load_by_name():
    cifar = load_classification("cifar10", "test")
    assert len(cifar) == 2000 and cifar.classnames[3] == "cat"
    caltech = load_classification("caltech101", "test")
    assert caltech.class_index("accordion") == 3
    assert len(load_captions("coco_mini", "test")) == 1000

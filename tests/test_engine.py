"""Training engine: label-aware loss, exact resume after SIGKILL, DDP = 1 process, learning."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from clip_backdoor.core.errors import ConfigError
from clip_backdoor.engine import clip_loss, contrastive_targets
from clip_backdoor.engine.checkpoint import load_checkpoint
from clip_backdoor.engine.config import parse_pretrain_recipe
from clip_backdoor.models import load_clip

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # same threads in every process: same arithmetic


def tiny_recipe(root: Path, steps: int, **training) -> dict:
    return {
        "name": "tiny-pretrain",
        "seed": 0,
        "runs_root": str(root),
        "model": {"name": "mini-tiny"},
        "data": [{"name": "synthetic", "size": 96, "templates": "photo"}],
        "training": {
            "steps": steps,
            "batch_size": 16,
            "lr": 1e-3,
            "warmup_steps": 2,
            "precision": "fp32",
            "num_workers": 0,
            "checkpoint_every": 4,
            "log_every": 4,
            **training,
        },
    }


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "clip_backdoor", *args]


def only_run(root: Path) -> Path:
    (run,) = root.iterdir()
    return run


def test_label_aware_targets():
    targets = contrastive_targets(torch.tensor([4, 7, 4, 9]))
    expected = torch.tensor([[0.5, 0, 0.5, 0], [0, 1.0, 0, 0], [0.5, 0, 0.5, 0], [0, 0, 0, 1.0]])
    assert torch.equal(targets, expected)
    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    scale = torch.tensor(2.0)
    # all-distinct groups are exactly CLIP's loss
    assert torch.allclose(
        clip_loss(image, text, scale, torch.arange(4)), clip_loss(image, text, scale)
    )
    # Images 0 and 2 are of one class, with different captions of it ("a photo of a cat." /
    # "a blurry photo of the cat."). Label-aware: each caption is a positive for both images,
    # so exchanging the two captions changes nothing. CLIP's targets make each a negative of
    # the other image, so the exchange changes the loss.
    groups = torch.tensor([0, 1, 0, 2])
    swapped = text[[2, 1, 0, 3]]
    aware, aware_swapped = (clip_loss(image, t, scale, groups) for t in (text, swapped))
    plain, plain_swapped = (clip_loss(image, t, scale) for t in (text, swapped))
    assert torch.allclose(aware, aware_swapped, atol=1e-6)
    assert not torch.allclose(plain, plain_swapped, atol=1e-3)


def test_recipe_errors_name_the_field(tmp_path):
    recipe = tiny_recipe(tmp_path, 4)
    recipe["training"]["lr_rate"] = 0.1
    with pytest.raises(ConfigError, match=r"training\.lr_rate: unknown field"):
        parse_pretrain_recipe(recipe)
    recipe = tiny_recipe(tmp_path, 4)
    recipe["training"]["epochs"] = 2
    with pytest.raises(ConfigError, match="exactly one of 'steps' and 'epochs'"):
        parse_pretrain_recipe(recipe)


@pytest.mark.slow  # two training processes, one killed
def test_resume_after_sigkill_gives_identical_weights(tmp_path):
    steps = 40
    straight = write_recipe(tmp_path / "a.yaml", tiny_recipe(tmp_path / "a", steps))
    # the uninterrupted reference trains beside the run that is killed: one thread each
    reference_log = tmp_path / "a.log"
    with reference_log.open("w") as log:
        reference_run = subprocess.Popen(
            cli("pretrain", str(straight)), env=ENV, stdout=log, stderr=subprocess.STDOUT
        )
    killed = write_recipe(tmp_path / "b.yaml", tiny_recipe(tmp_path / "b", steps))
    process = subprocess.Popen(
        cli("pretrain", str(killed)), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    checkpoint = None
    while time.time() < deadline and process.poll() is None:
        runs = list((tmp_path / "b").glob("*/artifacts/checkpoint.pt"))
        if runs:
            checkpoint = runs[0]
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint is not None, "no checkpoint was written before the deadline"
    run = only_run(tmp_path / "b")
    stopped_at = load_checkpoint(run / "artifacts")["step"]
    assert 0 < stopped_at < steps, "the kill must land mid-way"
    assert not (run / "artifacts" / "model").exists()

    subprocess.run(cli("pretrain", "--resume", str(run)), check=True, env=ENV, capture_output=True)
    assert reference_run.wait() == 0, reference_log.read_text()[-2000:]
    reference = load_clip(only_run(tmp_path / "a") / "artifacts" / "model").model
    resumed = load_clip(run / "artifacts" / "model").model.clip.state_dict()
    for key, value in reference.clip.state_dict().items():
        assert torch.equal(value, resumed[key]), key
    assert f"resumed at step {stopped_at}" in (run / "log.txt").read_text()


@pytest.mark.slow  # spawns a two-process group
def test_two_process_ddp_matches_one_process(tmp_path):
    steps = 6
    one = write_recipe(tmp_path / "one.yaml", tiny_recipe(tmp_path / "one", steps))
    two = write_recipe(tmp_path / "two.yaml", tiny_recipe(tmp_path / "two", steps))
    single_log = tmp_path / "one.log"
    with single_log.open("w") as log:  # beside the two ranks: one thread each, same arithmetic
        single = subprocess.Popen(
            cli("pretrain", str(one)), env=ENV, stdout=log, stderr=subprocess.STDOUT
        )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    torchrun += ["--master_port", "29533", "-m", "clip_backdoor", "pretrain", str(two)]
    result = subprocess.run(torchrun, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert single.wait() == 0, single_log.read_text()[-2000:]
    history_one = load_checkpoint(only_run(tmp_path / "one") / "artifacts")["history"]
    history_two = load_checkpoint(only_run(tmp_path / "two") / "artifacts")["history"]
    losses_one = torch.tensor([h[1] for h in history_one])
    losses_two = torch.tensor([h[1] for h in history_two])
    assert len(losses_one) == len(losses_two) == steps
    # Same global batches and the same global loss; only float summation order differs
    # (all_gather + gradient all-reduce), ~1e-7 relative per step. A per-process (local) loss
    # would differ by >1e-2 from the first step, so 1e-4 separates right from wrong.
    assert torch.allclose(losses_one, losses_two, rtol=1e-4, atol=1e-5), (losses_one, losses_two)
    a = load_clip(only_run(tmp_path / "one") / "artifacts" / "model").model.clip.state_dict()
    b = load_clip(only_run(tmp_path / "two") / "artifacts" / "model").model.clip.state_dict()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-4), key


def test_tiny_clip_learns_the_synthetic_set(synthetic_clip):
    """The session's synthetic CLIP is this engine's pretraining (300 steps on 960 pairs): its
    own held-out evaluation, read from its run folder, says it learnt the set."""
    import json

    (run,) = (synthetic_clip.parent / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 300
    ca = metrics["synthetic/test"]["ca"]
    # measured 0.57 on this project's machine; 0.4 (about 5x chance)
    # leaves room for other CPUs' rounding while still failing any run that did not learn
    assert ca >= 0.4, f"zero-shot CA {ca:.3f} on 12 classes (chance 0.083)"


def test_decoding_a_large_mix_holds_no_file_descriptor_per_image():
    """Worker-decoded images arrive in shared memory, one descriptor each: the 19k-pair v1 mix hit
    the open-file limit of 20,000 until they were copied out. 2,100 images under a limit of
    ~600 descriptors reproduce it (the workers start above 2,000 images)."""
    import resource

    from clip_backdoor.engine.pairs import ImageTextPairs, PairSource

    pairs = ImageTextPairs([PairSource("synthetic", size=2100)], None, 16)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 500, hard))
    try:
        pairs.preload()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(pairs.pixels) == 2100
    assert all(not t.is_shared() for t in pairs.pixels[::100])

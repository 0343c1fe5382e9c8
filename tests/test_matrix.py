"""Matrix recipes (issue 28): cells as ordinary runs, resumable, through submitit's executors."""

from __future__ import annotations

import copy
import json
import time

import pytest
from test_poisoning import RECIPE as POISON_RECIPE
from test_poisoning import TRAINING

from clip_backdoor.core.errors import ConfigError
from clip_backdoor.matrix.gate import attack_asr
from clip_backdoor.matrix.launch import matrix_status, run_matrix
from clip_backdoor.matrix.pace import cell_seconds, remaining_time
from clip_backdoor.matrix.spec import expand, parse_matrix
from clip_backdoor.reports.summary import write_summary


def matrix(tmp_path, **launcher) -> dict:
    attack = copy.deepcopy(POISON_RECIPE["stages"][0])
    attack.pop("kind")
    ft = {
        "method": "ft",
        "label": "ft",
        "params": {
            "data": [{"name": "synthetic", "split": "train", "size": 480, "templates": "simple"}],
            "fraction": 0.2,
            "training": {**TRAINING, "steps": 20},
        },
    }
    return {
        "kind": "matrix",
        "name": "tiny_matrix",
        "model": {"name": "mini-tiny"},
        "runs_root": str(tmp_path / "runs"),
        "data": [{"name": "synthetic", "split": "test", "size": 240}],
        "evaluation": {"templates": "simple", "quality": False},
        "matrix": {
            "attacks": [attack],
            "defenses": ["none", ft],
            "detectors": [{"method": "strip", "params": {"images": 40, "blends": 16}}],
            "seeds": [0],
        },
        "launcher": launcher or {"kind": "local"},
    }


def numbers(folders: dict) -> dict:
    import json

    return {
        name: json.loads((folder / "metrics.json").read_text())["points"][-1]["ca"]
        for name, folder in folders.items()
    }


def test_a_matrix_fills_its_grid_resumes_and_changes_nothing_when_complete(
    poisoned_cache, tmp_path, capsys
):
    spec = parse_matrix(matrix(tmp_path), "tiny")
    cells = expand(spec, "tiny")
    assert [c.name for c in cells] == [
        "badnet--none--s0",
        "badnet--ft--s0",
        "badnet--strip--s0",
    ]
    first = run_matrix(spec, "tiny", log=lambda m: None)
    assert all((f / "metrics.json").is_file() for f in first.values())

    # a second call with every cell present runs nothing
    start = time.perf_counter()
    again = run_matrix(spec, "tiny", log=lambda m: None)
    assert again == first and time.perf_counter() - start < 60
    sliced = run_matrix(spec, "tiny", log=lambda m: None, only="*--none--*")
    assert sliced == {"badnet--none--s0": first["badnet--none--s0"]}

    # a cell killed mid-run (its folder has no metrics.json) is run again, to the same numbers
    before = numbers(first)
    killed = first["badnet--ft--s0"]
    (killed / "metrics.json").unlink()
    redone = run_matrix(spec, "tiny", log=lambda m: None)
    assert redone["badnet--ft--s0"] != killed
    assert numbers(redone) == before

    # a cell whose recipe changed since its run (here STRIP's image count) runs again; the rest
    # are kept, and the summary below reads only the newest run of each cell
    changed = matrix(tmp_path)
    changed["matrix"]["detectors"][0]["params"]["images"] = 32
    status = matrix_status(parse_matrix(changed, "tiny"), "tiny")  # --status: says, runs nothing
    assert "badnet s0: 2/3; strip (stale)" in status
    assert "2 of 3 cells done, 1 to run\nto run: about " in status
    assert "not counted" not in status  # the stale STRIP folder gives STRIP's pace
    said = []
    rerun = run_matrix(parse_matrix(changed, "tiny"), "tiny", log=said.append)
    assert (
        "3 cells, 2 done, 1 to run (local), 1 of them again since their recipe changed" in said[0]
    )
    assert rerun["badnet--strip--s0"] != redone["badnet--strip--s0"]
    assert {k: v for k, v in rerun.items() if "strip" not in k} == {
        k: v for k, v in redone.items() if "strip" not in k
    }

    # the summary over every folder of the matrix (the glob of the README): the killed cell's
    # folder is skipped and named, the grid and the detector's AUROC come from the rest
    folders = sorted(str(f) for f in killed.parent.glob("*--*--s0"))
    assert str(killed) in folders
    text = write_summary("matrix", folders, tmp_path / "results")
    said = capsys.readouterr().err
    assert "skipped 1 unfinished run folder(s)" in said and said.rstrip().endswith(killed.name)
    assert "| badnet (s0) |" in text and "strip" in text and killed.name not in text
    import csv

    with (tmp_path / "results" / "matrix.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["defense"], r["detector"]) for r in rows} == {
        ("none", "-"),
        ("ft", "-"),
        ("none", "strip"),
    }
    assert len(rows) == 3  # one row a cell: the newest run of the re-run STRIP cell
    strip = next(r for r in rows if r["detector"] == "strip")
    assert strip["run"] == rerun["badnet--strip--s0"].name
    assert 0.0 <= float(strip["auroc"]) <= 1.0

    # the report of the same folders: the detectors' AUROC grid from the newest STRIP cell, and
    # no paper table repeating the attack once per cell
    from clip_backdoor.reports.html import write_report

    html = write_report(folders, tmp_path / "report").read_text()
    assert "Input detectors: AUROC" in html and rerun["badnet--strip--s0"].name in html
    assert redone["badnet--strip--s0"].name not in html and 'id="poisoning"' not in html
    # the detectors of one attack and seed on shared axes, not each cell's own one-curve figure
    assert html.count('alt="ROC curves, mini-tiny · badnet, seed 0"') == 1
    assert 'alt="roc"' not in html


def test_an_attack_that_did_not_implant_runs_no_other_cell(poisoned_cache, tmp_path):
    """``min_attack_asr``: the none cell measures the attack; under the gate its defenses and
    detectors are not run (locally and through submitit), and ``--status`` says why; a gate
    below the measured ASR runs them, the none cell kept."""
    recipe = matrix(tmp_path)
    attack = recipe["matrix"]["attacks"][0]
    attack["params"]["training"]["steps"] = 1  # an attack that leaves no backdoor
    recipe["matrix"]["min_attack_asr"] = 0.5
    said = []
    folders = run_matrix(parse_matrix(recipe, "tiny"), "tiny", log=said.append)
    assert list(folders) == ["badnet--none--s0"]
    asr = attack_asr(folders["badnet--none--s0"])
    assert 0.0 <= asr < 0.5
    why = f"not run, attack ASR {100 * asr:.1f}% < 50% under none"
    assert said[2:4] == [f"[2/3] badnet--ft--s0: {why}", f"[3/3] badnet--strip--s0: {why}"]
    assert said[-1].endswith(" s (2 cells not run: their attack did not implant)")
    status = matrix_status(parse_matrix(recipe, "tiny"), "tiny")
    assert f"  badnet s0: 1/1 (the rest not run: attack ASR {100 * asr:.1f}% < 50%" in status
    assert status.endswith("1 of 3 cells done, 0 to run, 2 not run (their attack did not implant)")
    # the submitit path (its debug executor) judges the none cell before the rest
    said = []
    recipe["launcher"] = {"kind": "debug"}
    again = run_matrix(parse_matrix(recipe, "tiny"), "tiny", log=said.append)
    assert again == folders and f"badnet--strip--s0: {why}" in said

    recipe["matrix"]["min_attack_asr"] = asr / 2  # below what the attack measured: all run
    again = run_matrix(parse_matrix(recipe, "tiny"), "tiny", log=lambda m: None)
    assert len(again) == 3 and again["badnet--none--s0"] == folders["badnet--none--s0"]


@pytest.mark.slow  # submitit's local executor starts a process a cell
def test_submitit_local_and_debug_executors_run_the_same_cells(poisoned_cache, tmp_path):
    """The --launcher slurm path (one submitit job per cell) without a cluster: LocalExecutor in
    subprocesses, DebugExecutor in this process (on one cell: it is the same code in-process).
    fp32 evaluation, since a subprocess does not see the suite's fp32 stand-in for 'auto' and
    would pick bf16 on an AMX CPU."""
    runs = {}
    for kind, only in (("local", None), ("submitit_local", None), ("debug", "*--none--*")):
        recipe = matrix(tmp_path / kind, kind=kind)
        recipe["evaluation"]["precision"] = "fp32"
        spec = parse_matrix(recipe, "tiny")
        runs[kind] = numbers(run_matrix(spec, "tiny", log=lambda m: None, only=only))
    assert runs["submitit_local"] == runs["local"] and len(runs["local"]) == 3
    assert runs["debug"] == {"badnet--none--s0": runs["local"]["badnet--none--s0"]}
    assert (tmp_path / "submitit_local" / "runs" / "tiny_matrix" / "submitit").is_dir()


def test_bad_matrix_input_is_one_line(tmp_path, monkeypatch):
    data = matrix(tmp_path)
    data["matrix"]["defenses"] = ["none", {"method": "ftt"}]
    with pytest.raises(ConfigError, match="cell badnet--ftt--s0.*unknown defense 'ftt'"):
        expand(parse_matrix(data, "tiny"), "tiny")
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match="--cells 'vpt' matches none of the 3 cells"):
        run_matrix(parse_matrix(matrix(tmp_path), "tiny"), "tiny", log=lambda m: None, only="vpt")
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match="matrix.attacks"):
        parse_matrix({**matrix(tmp_path), "matrix": {"attacks": []}}, "tiny")
    data = matrix(tmp_path)
    data["matrix"].update(defenses=data["matrix"]["defenses"][1:], min_attack_asr=0.1)
    with pytest.raises(ConfigError, match="min_attack_asr reads the 'none' cell: add 'none'"):
        parse_matrix(data, "tiny")

    import builtins

    real = builtins.__import__

    def no_submitit(name, *args, **kwargs):
        if name == "submitit":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_submitit)
    spec = parse_matrix(matrix(tmp_path, kind="slurm"), "tiny")
    with pytest.raises(ConfigError, match="needs submitit, which is not installed"):
        run_matrix(spec, "tiny", log=lambda m: None)


@pytest.mark.slow  # the GPU smoke's whole path on the CPU
def test_gpu_smoke_script_runs_its_path_on_the_cpu(tmp_path):
    """The smoke check's recipes and throughput loop on the tiny model (the path, not GPU
    numbers), and a device mismatch stops a run loudly."""
    import sys
    from pathlib import Path

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import gpu_smoke

    out = tmp_path / "gpu_smoke.md"
    argv = ["--device", "cpu", "--model", "mini-tiny", "--precision", "fp32", "--steps", "2"]
    argv += ["--batch-size", "8", "--runs-root", str(tmp_path / "runs"), "--out", str(out)]
    assert gpu_smoke.main(argv) == 0
    text = out.read_text()
    assert "| gpu_smoke_poisoning | poison, decomp_det, strip, scale_up, teco" in text
    assert "samples/s" in text

    from clip_backdoor.models import load_clip
    from clip_backdoor.pipeline.runner import check_device

    model = load_clip("mini-tiny").model
    model.register_buffer("stray", torch.zeros(1, device="meta"))
    with pytest.raises(RuntimeError, match="device mismatch after stage x: stray is on meta"):
        check_device(model, "cpu", "after stage x")


def test_the_grid_names_the_seeds_each_mean_is_over(tmp_path):
    """A grid being filled holds two seeds of one attack and one of another: each row says
    which, so a one-seed number is not read as a mean over seeds."""
    from clip_backdoor.reports.matrix import write_matrix

    def row(attack: str, seed: int, asr: float) -> dict:
        return {"model": "m", "attack": attack, "defense": "none", "detector": "-",
                "ca": 50.0, "asr": asr, "auroc": float("nan"), "seed": seed, "run": "r",
                "verdict": "-"}  # fmt: skip

    rows = [row("badnet", 0, 90.0), row("badnet", 1, 94.0), row("sig", 0, 80.0)]
    text = write_matrix(rows, [], tmp_path, "matrix_runs.json")
    assert "| badnet (s0, s1) | 92.0 ± 2.0 / 50.0 |" in text  # the mean +- spans both seeds
    assert "| sig (s0) | 80.0 / 50.0 |" in text
    assert "alone" not in text

    # an attack-seed the gate left with its none cell alone: the cells over fewer seeds than
    # their row say which, and the attack-seeds run alone are named with their ASR
    rows += [{**row("sig", 0, 10.0), "defense": "ft"}, row("sig", 1, 0.4)]
    text = write_matrix(rows, [], tmp_path, "matrix_runs.json")
    assert "| sig (s0, s1) | 40.2 ± 39.8 / 50.0 | 10.0 / 50.0 (s0) |" in text
    assert "not defended or detected" in text and ", sig s1 (ASR 0.4).\n" in text


def test_a_cells_time_is_read_from_its_log_and_the_rest_of_a_matrix_is_estimated_from_it(
    tmp_path,
):
    """``--status`` says how long the cells still to run take, at the median of the finished
    cells of each column, a cell that trained its attack timed apart; what has no finished
    example is said not to be counted."""
    root = tmp_path / "grid"
    for name, start, end, trained in [
        ("a--ft--s0", "10:00:00,000", "10:01:15,500", False),
        ("b--ft--s0", "11:00:00,000", "11:03:00,000", False),
        ("c--ft--s0", "12:00:00,000", "12:02:00,000", False),
        ("c--none--s1", "13:00:00,000", "13:10:00,000", True),
    ]:
        folder = root / f"20261206-000000-{name}"
        folder.mkdir(parents=True)
        (folder / "log.txt").write_text(
            f"2026-12-06 {start} model mini-clip\nTraceback (no stamp)\n"
            f"2026-12-06 {end} metrics {{}}\n"
        )
        metrics = {"attack.attack": {"reused": not trained}}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    assert cell_seconds(root / "20261206-000000-a--ft--s0") == 75.5
    (root / "20261206-000000-b--ft--s0" / "metrics.json").unlink()  # unfinished: not a pace
    assert cell_seconds(root / "20261206-000000-b--ft--s0") is None
    # 2 ft cells at median(75.5, 120) s = 195.5 s; the trained none cell is not none's pace
    said = remaining_time(root, ["ft", "ft", "strip"], untrained=0)
    assert said.startswith("about 3 min at the median")
    assert said.endswith("(1 cells of columns with none finished not counted)")
    # one attack to train: + 600 s
    said = remaining_time(root, ["ft", "ft"], untrained=1)
    assert said.startswith("about 13 min at the median") and "training of 1 attacks" in said
    assert "not counted" not in said
    (root / "20261206-000000-c--none--s1" / "metrics.json").unlink()
    said = remaining_time(root, ["ft", "ft"], untrained=1)
    assert said.endswith("(the attacks' training (no finished cell trained one) not counted)")

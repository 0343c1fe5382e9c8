"""Model scans: the pieces against hand-computed values, verdicts on tiny models, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from clip_backdoor.core.errors import ConfigError


def test_mean_pairwise_cosine_is_the_off_diagonal_mean():
    from clip_backdoor.scanning.decree import mean_pairwise_cosine

    features = torch.randn(9, 5)
    unit = torch.nn.functional.normalize(features, dim=-1)
    matrix = unit @ unit.T
    expected = (matrix.sum() - matrix.diag().sum()) / (9 * 8)
    torch.testing.assert_close(mean_pairwise_cosine(features), expected)
    same = torch.ones(4, 3)
    assert float(mean_pairwise_cosine(same)) == pytest.approx(1.0)


def test_cost_schedule_rises_on_success_falls_on_failure_and_resets():
    from clip_backdoor.scanning.inversion import CostSchedule

    cost = CostSchedule(initial=1e-3, factor=5.0, patience=2, minimum=1e-5, reset_after=3)
    for _ in range(3):
        cost.update(True)
    assert cost.value == pytest.approx(5e-3)  # raised after more than `patience` successes
    for _ in range(9):
        cost.update(False)
    assert cost.value == pytest.approx(5e-3 / 125)  # three falls of 5x
    cost.value = 1e-6  # below the floor and succeeding: back to the initial value
    for _ in range(4):
        cost.update(True)
    assert cost.value == pytest.approx(1e-3)


def test_anomaly_index_points_at_the_planted_small_value():
    from clip_backdoor.scanning.classwise import anomaly_index

    values = np.array([0.30, 0.28, 0.33, 0.31, 0.29, 0.02, 0.32])
    index = anomaly_index(values, low_is_outlier=True)
    assert int(np.argmax(index)) == 5 and index[5] > 5  # 9.4 by hand: (0.30-0.02)/(1.4826*0.02)
    assert abs(index[0]) < 1.5


def test_classwise_search_cost_does_not_grow_with_the_full_searches():
    from clip_backdoor.scanning.classwise import ClasswiseSpec, classwise_search

    calls = {"pre": 0, "full": 0}

    def pre(c):
        calls["pre"] += 1
        return -abs(c - 42)  # class 42 is the easiest

    def full(c):
        calls["full"] += 1
        return float(c)

    spec = ClasswiseSpec(candidates=3, controls=4)
    result = classwise_search(list(range(100)), pre, full, spec, torch.Generator().manual_seed(0))
    assert calls == {"pre": 100, "full": 7}
    assert result["candidates"][0] == 42 and set(result["candidates"]) == {41, 42, 43}
    assert not set(result["controls"]) & set(result["candidates"])


def test_a_class_search_does_not_depend_on_the_classes_searched_before_it(tiny):
    """So a reference's mask share per class can be cached and reused by every later scan."""
    from clip_backdoor.scanning.base import ScanImages, ScanSubject
    from clip_backdoor.scanning.target_search import ClassInverter, TargetSearchSpec

    subject = ScanSubject(tiny.model, tiny.tokenizer, "mini-tiny")
    pixels = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator())
    images = ScanImages(pixels, torch.arange(12) % 3, ["cat", "dog", "car"], "random")
    spec = TargetSearchSpec(steps=10, batch_size=4, success=0.25)  # found within 10 steps
    alone = ClassInverter(spec, subject, images, seed=0).refine(2)
    assert alone < 1.0  # a mask was found, so the comparisons below compare masks
    inverter = ClassInverter(spec, subject, images, seed=0)
    inverter.prescreen(1), inverter.refine(0)
    assert inverter.refine(2) == alone
    assert ClassInverter(spec, subject, images, seed=1).refine(2) != alone


def test_a_lines_perturbation_is_a_row_profile_plus_a_column_profile(tiny):
    """The 'lines' basis (stripes and grids) has 6 x size degrees of freedom, not 3 x size^2:
    every 2x2 minor of delta cancels while no value is clipped, and the budget holds."""
    from clip_backdoor.scanning.base import ScanImages, ScanSubject
    from clip_backdoor.scanning.classes import ClassHead
    from clip_backdoor.scanning.perturbation import UniversalPerturbation

    subject = ScanSubject(tiny.model.eval().requires_grad_(False), tiny.tokenizer, "mini-tiny")
    pixels = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator())
    images = ScanImages(pixels, torch.arange(12) % 3, ["cat", "dog", "car"], "random")
    head = ClassHead(subject, images.classnames, "simple", False)
    deltas = {}
    for basis, eps in (("lines", 1.0), ("lines", 0.1), ("pixels", 0.1)):
        search = UniversalPerturbation(
            images, {0: 0, 1: 1, 2: 2}, eps, eps / 4, 4, 8, "fp32", torch.device("cpu"),
            torch.Generator().manual_seed(0), basis,
        )  # fmt: skip
        deltas[basis, eps] = search.ascend(head, 2, 2)[0]
    free = deltas["lines", 1.0]  # 2 steps of eps/4 per profile: their sum is never clipped
    minors = free - free[:, :1, :] - free[:, :, :1] + free[:, :1, :1]
    assert minors.abs().max() < 1e-6 and free.abs().max() > 0.3
    assert deltas["lines", 0.1].abs().max() <= 0.1 + 1e-7
    pixel = deltas["pixels", 0.1]
    assert (pixel - pixel[:, :1, :] - pixel[:, :, :1] + pixel[:, :1, :1]).abs().max() > 0.05


def test_verdicts_combine_by_the_largest_margin():
    from clip_backdoor.scanning.base import Finding, judge
    from clip_backdoor.scanning.scan import combine

    assert judge(0.02, 0.1, True, 0.1) == "backdoored"
    assert judge(0.5, 0.1, True, 0.1) == "clean"
    assert judge(0.095, 0.1, True, 0.1) == "inconclusive"
    decree = Finding("decree", 0.5, 0.1, True, "clean")
    search = Finding("target_search", 5.0, 2.0, False, "backdoored", target="accordion")
    verdict, score, target, evidence = combine([decree, search], 0.1)
    assert (verdict, target) == ("backdoored", "accordion") and score == pytest.approx(1.5)
    calm = Finding("target_search", 1.0, 2.0, False, "clean", target="ant")
    verdict, score, target, evidence = combine([decree, calm], 0.1)
    assert verdict == "clean" and target is None and evidence["most_suspect_class"] == "ant"


FAST = {
    "decree": {"steps": 150},
    "target_search": {"steps": 100, "prescreen_steps": 4, "controls": 3},
}
# the tiny set's 8-px trigger is a quarter of its 32-px side: a patch of that size, a 4 x 4 grid
PATCH = {"patch": 0.25, "stride": 1.0, "rounds": [2, 2, 4, 4], "controls": 8, "eval_images": 32}


TARGET = "red circle"  # the first class of the synthetic set
# patch_search's tiny backdoor targets another class: a scanner must not favour class 0. (The
# tiny CLIP learns a 150-step backdoor towards red classes only: 'blue triangle' reached 0.9%
# ASR, 'green square' 5%, 'red square' over 90%.)
OTHER_TARGET = "red square"
TINY_TRAINING = {
    "batch_size": 48,
    "lr": 1e-3,
    "warmup_steps": 10,
    "precision": "fp32",
    "log_every": 150,
    "num_workers": 0,
}
TINY_DATA = [{"name": "synthetic", "split": "train", "size": 960, "templates": "simple"}]


def _tiny_badnet(target: str) -> dict:
    """The demo's attack stage: an 8-px bottom-right BadNet patch, 10% of the pairs, 150 steps."""
    return {
        "kind": "attack",
        "method": "poison",
        "params": {
            "trigger": {"name": "badnet", "params": {"size": 8, "position": "bottom_right"}},
            "target": target,
            "ratio": 0.1,
            "data": TINY_DATA,
            "caption_templates": "simple",
            "training": {"steps": 150, "checkpoint_every": 150, **TINY_TRAINING},
        },
    }


def _tiny_run(model, stage: dict, root):
    from clip_backdoor.pipeline.recipes import parse_recipe
    from clip_backdoor.pipeline.runner import run_recipe

    recipe = {
        "name": "tiny_zoo",
        "runs_root": str(root / "runs"),
        "model": {"name": str(model)},
        "data": [{"name": "synthetic", "split": "test", "size": 240}],
        "evaluation": {"templates": "simple", "quality": False},
        "stages": [stage],
    }
    return run_recipe(parse_recipe(recipe), progress=False)


@pytest.fixture(scope="module")
def tiny_zoo(synthetic_clip, tmp_path_factory, tiny_attack_cache):
    """The synthetic CLIP poisoned with an 8-px bottom-right BadNet patch towards 'red circle'
    (the demo's attack, 150 steps) and the same CLIP fine-tuned on clean pairs (60 steps):
    (backdoor artifact folder, its ASR, clean fine-tune folder)."""
    root = tmp_path_factory.mktemp("tiny_zoo")
    attack = _tiny_badnet(TARGET)
    with pytest.MonkeyPatch.context() as patch:  # a module fixture runs before the autouse one
        patch.setenv("CLIP_BACKDOOR_CACHE", tiny_attack_cache)
        backdoored = _tiny_run(synthetic_clip, attack, root)
        ft = {
            "kind": "defense",
            "method": "ft",
            "params": {
                "data": TINY_DATA,
                "fraction": 0.5,
                "training": {"steps": 60, "checkpoint_every": 60, **TINY_TRAINING},
            },
        }
        clean = _tiny_run(synthetic_clip, ft, root)
        folder = backdoored.path / "artifacts" / "backdoor"
        asr = backdoored.metrics["evaluation"]["asr"]
    return folder, asr, clean.path / "artifacts" / "ft"


@pytest.fixture(scope="module")
def tiny_backdoor(tiny_zoo):
    return tiny_zoo[0], tiny_zoo[1]


def _scan(model: str, runs, **extra):
    from clip_backdoor.pipeline.scan import ScanRequest, run_scan

    request = ScanRequest(
        model=model, data="synthetic", size=480, images=96, params=FAST, runs_root=str(runs)
    )
    for key, value in extra.items():
        setattr(request, key, value)
    return run_scan(request)


def test_a_tiny_backdoor_is_flagged_with_its_target_and_a_clean_fine_tune_is_not(
    shared_cache, synthetic_clip, tiny_zoo, tmp_path
):
    """Both scanned against their public base (the synthetic CLIP) as the reference. Measured:
    the backdoored tiny CLIP (ASR ~1.0) is flagged by target_search with 'red circle' as its
    target (its easiest class, reached with a mask over 2x smaller than in the base); the clean
    fine-tune is not flagged. Without a reference, DECREE's default PL1
    threshold of 0.1 (set on full-size encoders) flags the clean 2-layer 32-px CLIP too: a 3%
    mask collapses its embeddings. The trigger files are removed from the artifact first: the
    scan must not need them."""
    folder, asr, clean_ft = tiny_zoo
    assert asr > 0.9
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    for name in ("trigger.json", "trigger.safetensors", "backdoor.json", "poison.json"):
        (bare / name).unlink(missing_ok=True)
    base = str(synthetic_clip)
    report, run, table = _scan(str(bare), tmp_path / "runs", reference=base)
    search = {f.scanner: f for f in report.findings}["target_search"]
    assert report.verdict == "backdoored" and report.target == TARGET, report.summary()
    assert search.score > search.threshold  # its target needs < half the base's mask
    # the pre-screen keeps the target among the classes searched fully (its rank among them
    # moves with the CPU's kernels: first on AVX2, second after 'red triangle' on an AMX Xeon)
    assert TARGET in search.evidence["candidates"]
    assert search.evidence["reference_log_ratio"][TARGET] == search.score
    assert (run.path / "scan.json").is_file() and (run.path / "figures/scan_triggers.png").is_file()

    again, _, _ = _scan(str(bare), tmp_path / "runs", reference=base)  # read back, not searched
    count = len(report.findings)  # every scanner of 'all'
    assert [f.reused for f in report.findings + again.findings] == [False] * count + [True] * count
    for first, second in zip(report.findings, again.findings, strict=True):
        assert {**second.summary(), "reused": False} == {**first.summary(), "reused": False}
        assert all(torch.equal(first.images[k], second.images[k]) for k in first.images)
    # the search does not depend on the reference: the plain scan reads the same search back
    plain, _, _ = _scan(str(bare), tmp_path / "runs")
    assert all(f.reused for f in plain.findings)
    plain_search = {f.scanner: f for f in plain.findings}["target_search"]
    assert plain_search.score == search.evidence["anomaly_index"]
    assert plain_search.evidence["mask_share"] == search.evidence["mask_share"]

    clean, _, _ = _scan(str(clean_ft), tmp_path / "runs", reference=base)
    clean_search = {f.scanner: f for f in clean.findings}["target_search"]
    assert clean.verdict != "backdoored", clean.summary()
    assert clean_search.score < search.score


@pytest.fixture(scope="module")
def tiny_sig(synthetic_clip, tmp_path_factory, tiny_attack_cache):
    """The synthetic CLIP poisoned with SIG's full-image sinusoid (mini-CLIP's recipe's
    amplitude, 60/255) towards 'red circle', 150 steps like tiny_zoo's BadNet: a trigger with no
    small region for a mask to find. (artifact folder, ASR)."""
    root = tmp_path_factory.mktemp("tiny_sig")
    attack = {
        "kind": "attack",
        "method": "poison",
        "params": {
            "trigger": {"name": "sig", "params": {"delta": 60 / 255, "frequency": 6}},
            "target": "red circle",
            "ratio": 0.1,
            "data": TINY_DATA,
            "caption_templates": "simple",
            "training": {"steps": 150, "checkpoint_every": 150, **TINY_TRAINING},
        },
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLIP_BACKDOOR_CACHE", tiny_attack_cache)
        run = _tiny_run(synthetic_clip, attack, root)
    return run.path / "artifacts" / "backdoor", run.metrics["evaluation"]["asr"]


# 16/255: the tiny SIG trigger (60/255 on 32 px) is not reached at the scanner's default 8/255
PERTURBATION = {
    "perturbation_search": {"eps": 16 / 255, "steps": 30, "prescreen_steps": 4, "controls": 3}
}


@pytest.mark.slow  # trains a SIG backdoor for the opt-in scanner
def test_perturbation_search_flags_a_tiny_sig_backdoor_and_not_the_clean_fine_tune(
    shared_cache, synthetic_clip, tiny_sig, tiny_zoo, tmp_path
):
    """Both scanned against their public base (the synthetic CLIP) with a 16/255 budget and the
    scanner's threshold (a gain in reach of 0.3 over the base). Measured on AVX2: the SIG
    backdoor's 'red circle' gains 0.44 in reach over the base (0.94 vs 0.50); the clean
    fine-tune's best gain is 0.03. At the default 8/255 neither is flagged on this tiny model
    (gains 0.07 and 0.19: red shapes are easy to reach in the synthetic world at any budget)."""
    folder, asr = tiny_sig
    assert asr > 0.9
    runs, base = tmp_path / "runs", str(synthetic_clip)
    only = {"scanners": ["perturbation_search"], "params": PERTURBATION, "reference": base}
    report, _, _ = _scan(str(folder), runs, **only)
    (finding,) = report.findings
    gains = finding.evidence["reference_gain"]
    assert report.verdict == "backdoored", report.summary()
    # the true target gains past the threshold (0.44 on AVX2, 0.43 on an AMX Xeon); whether it
    # gains most moves with the CPU's kernels: on the AMX Xeon this tiny SIG fine-tune also made
    # 'green square' easy (0.09 -> 0.71 of images, gain 0.62), which then named the target
    assert gains["red circle"] > 0.3 and finding.score == max(gains.values())
    assert report.target == max(gains, key=gains.get)
    # every class pre-screened on both; the classes that gained most were searched fully too
    assert set(finding.evidence["reach"]) < set(finding.evidence["prescreen"])
    assert set(finding.evidence["reference_candidates"]) <= set(finding.evidence["reach"])
    clean, _, _ = _scan(str(tiny_zoo[2]), runs, **only)
    (calm,) = clean.findings
    assert clean.verdict == "clean" and calm.score < 0.3, clean.summary()
    assert calm.score < finding.score


def test_scan_as_a_recipe_stage_records_the_truth_after_the_verdict(
    shared_cache, synthetic_clip, tiny_backdoor, tmp_path
):
    from clip_backdoor.pipeline.recipes import parse_recipe
    from clip_backdoor.pipeline.runner import run_recipe

    folder, _ = tiny_backdoor
    recipe = {
        "name": "scan_stage",
        "runs_root": str(tmp_path / "runs"),
        "model": {"name": str(folder)},
        "data": [{"name": "synthetic", "split": "test", "size": 240}],
        "evaluation": {"templates": "simple", "quality": False},
        "stages": [
            {
                "kind": "scan",
                "method": "target_search",
                "params": {
                    "data": {"size": 480},
                    "images": 96,
                    "scanners": {"target_search": FAST["target_search"]},
                    "reference": {"name": str(synthetic_clip)},
                },
            }
        ],
    }
    result = run_recipe(parse_recipe(recipe), progress=False)
    scan = result.metrics["scan.target_search"]
    assert scan["verdict"] == "backdoored" and scan["target"] == TARGET
    assert scan["truth"] == {"attacked": True, "target": TARGET}
    assert (result.path / "scans" / "target_search" / "scan.json").is_file()

    # the zoo table reads the truth from the run and the true patch from the artifact
    from clip_backdoor.reports.scan import SCAN_COLUMNS
    from clip_backdoor.reports.summary import write_summary

    text = write_summary("scan", [str(result.path)], tmp_path / "results")
    lines = (tmp_path / "results" / "scan.csv").read_text().splitlines()
    assert lines[0].split(",") == SCAN_COLUMNS
    rows = [dict(zip(SCAN_COLUMNS, line.split(","), strict=True)) for line in lines[1:]]
    # judged against the synthetic CLIP: the reference's own line
    assert {r["scanner"] for r in rows} == {"target_search vs reference", "combined vs reference"}
    search = next(r for r in rows if r["scanner"] == "target_search vs reference")
    assert search["truth"] == "backdoored" and search["attack"] == "badnet"
    assert search["target_true"] == search["target_found"] == TARGET
    share = float(search["mask_on_trigger"])  # the 8-px patch is 6% of the 32-px image
    assert 0.0 <= share <= 1.0
    assert "flagged backdoored" in text

    # a later run of the same recipe and seed replaces the earlier one: one model, one point
    later = result.path.with_name("29991231-235959-" + result.path.name.split("-", 2)[2])
    shutil.copytree(result.path, later)
    assert write_summary("scan", [str(later)], tmp_path / "results") == text.replace(
        result.path.name, later.name
    )
    ledger = json.loads((tmp_path / "results" / "scan_runs.json").read_text())
    assert [record["run"] for record in ledger] == [later.name]


@pytest.fixture(scope="module")
def vit_b_32():
    from clip_backdoor.models import load_clip

    torch.manual_seed(0)
    model, _, tokenizer = load_clip("ViT-B-32")
    return model.eval(), tokenizer


@pytest.mark.parametrize(
    "name",
    [
        "decree",
        "target_search",
        "perturbation_search",
        "patch_search",
        "blend_search",
        "prompt_inspector",
        "cocoop",
    ],
)
def test_scanners_run_a_few_steps_on_an_untrained_vit_b_32(name, vit_b_32):
    """Every scanner on the full-size path; prompt_inspector through CoOp and CoCoOp (whose
    prompts depend on the image, so the perturbation's gradient runs through the meta-net)."""
    from clip_backdoor.prompts.cocoop import CoCoOp
    from clip_backdoor.prompts.coop import CoOp
    from clip_backdoor.scanning.base import ScanImages, ScanSubject
    from clip_backdoor.scanning.scan import build_scanners

    model, tokenizer = vit_b_32
    kinds = {"prompt_inspector": CoOp, "cocoop": CoCoOp}
    learner = kinds[name](model, tokenizer, n_ctx=2, init=None) if name in kinds else None
    name = "prompt_inspector" if name == "cocoop" else name
    subject = ScanSubject(model, tokenizer, "ViT-B-32", learner)
    pixels = torch.randint(0, 256, (4, 3, 224, 224), dtype=torch.uint8)
    names = ["cat", "dog", "bird", "fish"]  # patch/blend_search need 2 controls past a suspect
    images = ScanImages(pixels, torch.tensor([0, 1, 2, 3]), names, "random")
    few = {
        "decree": {"steps": 2, "batch_size": 2},
        "target_search": {"steps": 2, "prescreen_steps": 1, "batch_size": 2, "controls": 2},
        "perturbation_search": {
            "steps": 1,
            "prescreen_steps": 1,
            "batch_size": 2,
            "eval_images": 8,
            "controls": 2,
        },
        # half the side: 4 places at 224 px, one token grid step of ViT-B/32 is 32 px
        "patch_search": {
            "patch": 0.5,
            "batch_size": 2,
            "sweep_steps": 1,
            "sweep_batch": 1,
            "sweep_images": 4,
            "rounds": [1],
            "eval_images": 8,
            "controls": 2,
        },
        "blend_search": {
            "starts": 1,
            "batch_size": 2,
            "sweep_steps": 1,
            "sweep_batch": 1,
            "sweep_images": 4,
            "steps": 1,
            "batch": 2,
            "eval_images": 8,
            "controls": 2,
        },
        "prompt_inspector": {
            "steps": 1,
            "prescreen_steps": 1,
            "batch_size": 2,
            "eval_images": 8,
            "controls": 2,
        },
    }
    (scanner,) = build_scanners([name], {name: few[name]})
    finding = scanner.scan(subject, images, seed=0)
    assert np.isfinite(finding.score) and finding.verdict in ("backdoored", "clean", "inconclusive")
    assert finding.seconds > 0


def test_bad_scan_input_is_one_line_and_leaves_no_run_folder(tmp_path, capsys):
    from clip_backdoor.cli import main

    runs = tmp_path / "runs"
    base = ["scan", "mini-tiny", "--data", "synthetic", "--size", "120", "--runs-root", str(runs)]
    cases = [
        (["--images", "500"], "has 120 images; the scan needs 500"),
        (["--images", "64", "--reference", "mini"], "another architecture"),
        (["--images", "64", "--scanners", "prompt_inspector"], "is a plain model"),
        (["--images", "64", "--fail-on", "suspicious"], "not a failing verdict"),
        (["--images", "64", "--budget", "quick"], "unknown scan budget 'quick'"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not runs.exists() or not any(runs.iterdir())
    with pytest.raises(ConfigError, match="SCANNER.KEY=VALUE"):
        from clip_backdoor.pipeline.scan import parse_params

        parse_params(["decree=3"])


def test_a_saved_finding_reads_back_whole_with_no_partial_folder_left(tmp_path):
    from clip_backdoor.scanning.base import Finding
    from clip_backdoor.scanning.cache import load_finding, save_finding

    finding = Finding("decree", 0.25, float("inf"), True, "clean", None, {"pl1": [0.1, 0.2]})
    finding.images = {"trigger": torch.rand(3, 8, 8)}
    save_finding(finding, tmp_path / "f")
    back = load_finding(tmp_path / "f")
    assert back.reused and back.threshold == float("inf") and back.evidence == finding.evidence
    assert torch.equal(back.images["trigger"], finding.images["trigger"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # no partial folder left


def test_calibration_on_clean_references_is_leave_one_out():
    from clip_backdoor.reports.scan import auroc, calibrate

    def row(model, truth, score, scanner="decree"):
        return {
            "model": model,
            "seed": 0,
            "truth": truth,
            "scanner": scanner,
            "score": score,
            "suspect_below": scanner == "decree",
        }

    rows = [
        row("ref_a", "clean", 0.30),
        row("ref_b", "clean", 0.25),
        row("ref_c", "clean", 0.12),  # the most suspicious reference
        row("bd", "backdoored", 0.02),
        row("weak", "backdoored", 0.20),
    ]
    rows += [{**r, "scanner": "combined", "score": 0.0, "suspect_below": False} for r in rows]
    calibrate(rows)
    marks = {(r["model"], r["scanner"]): r["verdict_calibrated"] for r in rows}
    assert marks[("bd", "decree")] == "backdoored"  # below every reference's PL1
    assert marks[("weak", "decree")] == "clean"  # ref_c needs less mask than it
    assert marks[("ref_c", "decree")] == "backdoored"  # judged against a and b only
    assert marks[("ref_a", "decree")] == marks[("ref_b", "decree")] == "clean"
    assert marks[("bd", "combined")] == "backdoored"
    # pairs (backdoored more suspicious than clean): bd beats 3, weak beats 2 of 3
    assert auroc([r for r in rows if r["scanner"] == "decree"]) == pytest.approx(5 / 6)


def test_a_one_scanner_scan_counts_on_its_scanner_line_not_the_combined_one(tmp_path):
    """perturbation_search scanned alone: its combined row is its own verdict, so the zoo's
    `combined` line (the scan's verdict over several scanners) leaves it out."""
    from clip_backdoor.reports.scan import scan_rows, write_scan

    def metrics(scanners: list[str], verdict: str) -> dict:
        findings = [
            {"scanner": s, "score": 0.5, "threshold": 0.3, "suspect_below": False,
             "verdict": verdict, "target": "accordion", "seconds": 1.0}
            for s in scanners
        ]  # fmt: skip
        scan = {"scanners": findings, "score": 0.6, "verdict": verdict, "target": "accordion"}
        scan["truth"] = {"attacked": True, "target": "accordion"}
        return {"attack": {"asr": 0.9}, "scan.scan": scan}

    rows = []
    for name, scanners in (("alone", ["perturbation_search"]), ("both", ["decree", "x"])):
        config = {"name": name, "seed": 0, "model": {"name": "m"}}
        rows += scan_rows(metrics(scanners, "backdoored"), config)
    text = write_scan(rows, [], tmp_path, "scan_runs.json")
    line = next(r for r in text.splitlines() if r.startswith("| combined |"))
    assert "| 1/1 |" in line  # the two-scanner scan only
    line = next(r for r in text.splitlines() if r.startswith("| perturbation_search |"))
    assert "| 1/1 |" in line
    # against a reference the score is in another unit: its own line
    judged = metrics(["target_search"], "clean")
    judged["scan.scan"]["reference"] = "mini-clip"
    (row, verdict) = scan_rows(judged, {"name": "ref", "seed": 0, "model": {"name": "m"}})
    assert row["scanner"] == "target_search vs reference"
    assert verdict["scanner"] == "combined vs reference"  # not counted with the plain verdicts


def test_the_triggers_figure_shows_a_rescan_against_a_reference_once(tmp_path):
    """A scan against a reference re-uses the scanned model's inversion: the same picture twice
    would be one panel drawn twice, so identical inverted files make one row of the figure."""
    from PIL import Image
    from safetensors.torch import save_file

    from clip_backdoor.reports.scan import triggers_figure
    from clip_backdoor.scanning.report import INVERTED_FILE

    pictures = {"decree.mask": torch.rand(3, 8, 8), "decree.stamped": torch.rand(3, 8, 8)}
    rows = []
    for label, seed in (("scan", 0), ("scan_reference", 0), ("scan_other", 1)):
        folder = tmp_path / "run" / "scans" / label
        folder.mkdir(parents=True)
        if label == "scan_other":
            pictures = {k: v.flip(-1) for k, v in pictures.items()}  # another model's inversion
        save_file(pictures, str(folder / INVERTED_FILE))
        rows.append({"truth": "backdoored", "attack": "badnet", "seed": seed,
                     "scan_folder": str(folder)})  # fmt: skip
    path = triggers_figure(rows, tmp_path / "triggers.png")
    assert Image.open(path).height == 2 * 200  # two panels of 2.0 in at 100 dpi, not three


def test_a_scan_stage_names_several_scanners_as_the_command_does():
    """`method: decree,perturbation_search` runs both, opt-in ones included, as `--scanners`
    does; an unknown name in the list is named in one line."""
    from clip_backdoor.pipeline.recipes import parse_recipe
    from clip_backdoor.scanning.stage import ScanStage

    def recipe(method: str) -> dict:
        stage = {"kind": "scan", "method": method, "params": {"images": 8}}
        return {"name": "r", "model": {"name": "tiny"}, "stages": [stage]}

    parse_recipe(recipe("decree,perturbation_search"))
    stage = ScanStage("decree,perturbation_search", images=8)
    assert [s.name for s in stage.scanners] == ["decree", "perturbation_search"]
    with pytest.raises(ConfigError, match="unknown scan 'nope'"):
        parse_recipe(recipe("decree,nope"))


def test_a_scan_adding_an_opt_in_scanner_has_its_own_line_and_repeats_count_once(tmp_path):
    """The default scan (decree + x) and a thorough one (the same two read back from the
    cache, plus perturbation_search) of one model: two verdicts on two lines, but decree's
    one finding counts once on decree's line."""
    from clip_backdoor.reports.scan import scan_rows, write_scan

    def scan(scanners: dict[str, float]) -> dict:
        findings = [
            {"scanner": s, "score": v, "threshold": 0.3, "suspect_below": False,
             "verdict": "backdoored" if v > 0.3 else "clean", "target": "accordion",
             "seconds": 1.0}
            for s, v in scanners.items()
        ]  # fmt: skip
        verdict = "backdoored" if max(scanners.values()) > 0.3 else "clean"
        return {"scanners": findings, "score": max(scanners.values()) - 0.3,
                "verdict": verdict, "target": "accordion",
                "truth": {"attacked": True, "target": "accordion"}}  # fmt: skip

    metrics = {
        "attack": {"asr": 0.9},
        "scan.scan": scan({"decree": 0.1, "x": 0.2}),
        "scan.scan_thorough": scan({"decree": 0.1, "x": 0.2, "perturbation_search": 0.5}),
    }
    rows = scan_rows(metrics, {"name": "m", "seed": 0, "model": {"name": "m"}})
    assert {r["scanner"] for r in rows} == {
        "decree", "x", "perturbation_search", "combined", "combined with perturbation_search"
    }  # fmt: skip
    text = write_scan(rows, [], tmp_path, "scan_runs.json")
    lines = {r.split(" | ")[0][2:]: r for r in text.splitlines() if r.startswith("| ")}
    assert "| 0/1 |" in lines["combined"]  # the default scan misses it
    assert "| 1/1 |" in lines["combined with perturbation_search"]
    body = [r for r in text.splitlines() if r.startswith("| m/m |") and "| decree |" in r]
    assert len(body) == 1  # one finding, one row


def test_a_scanner_away_from_its_defaults_has_its_own_line():
    """perturbation_search at 32/255 in lines (a probe) is not the 8/255 default scanner: its
    rows must not count on, or calibrate, the default scanner's line."""
    from clip_backdoor.reports.scan import scan_rows

    finding = {"scanner": "perturbation_search", "score": 0.31, "threshold": 0.3,
               "suspect_below": False, "verdict": "backdoored", "target": "accordion"}  # fmt: skip
    scan = {"scanners": [finding], "score": 0.01, "verdict": "backdoored", "target": "accordion",
            "truth": {"attacked": True, "target": "accordion"}}  # fmt: skip
    stage = {"kind": "scan", "method": "perturbation_search"}
    probe = {"scanners": {"perturbation_search": {"eps": 0.12549, "basis": "lines"}}}
    stages = [{**stage, "label": "scan", "params": {}},
              {**stage, "label": "scan_lines", "params": probe}]  # fmt: skip
    config = {"name": "m", "seed": 0, "model": {"name": "m"}, "stages": stages}
    rows = scan_rows({"attack": {"asr": 0.9}, "scan.scan": scan, "scan.scan_lines": scan}, config)
    assert sorted(r["scanner"] for r in rows if r["scanner"] != "combined") == [
        "perturbation_search",
        "perturbation_search (basis=lines, eps=0.1255)",
    ]


def test_failed_and_partial_attacks_are_reported_apart_with_each_verdict():
    """A failed attack (ASR ~0, in effect a clean model) and a partial one stay out of the
    ROC but get their own table: one line per model, the scan's verdict in each mode."""
    from clip_backdoor.reports.scan import apart_section, scan_rows

    def metrics(asr: float, verdict: str, reference: str | None = None) -> dict:
        finding = {"scanner": "decree", "score": 0.05, "threshold": 0.1, "suspect_below": True,
                   "verdict": verdict, "target": "pyramid", "seconds": 1.0}  # fmt: skip
        scan = {"scanners": [finding], "score": 0.5, "verdict": verdict, "target": "pyramid",
                "truth": {"attacked": True, "target": "accordion"}}  # fmt: skip
        if reference:
            scan["reference"] = reference
        return {"points": [{"asr": asr}], "scan.scan": scan}

    rows = scan_rows(metrics(0.005, "clean"), {"name": "wanet", "seed": 0, "model": {}})
    rows += scan_rows(metrics(0.3, "backdoored"), {"name": "half", "seed": 1, "model": {}})
    judged = metrics(0.3, "clean", reference="mini-clip")
    rows += scan_rows(judged, {"name": "half", "seed": 1, "model": {}})
    rows += scan_rows(metrics(0.9, "backdoored"), {"name": "works", "seed": 0, "model": {}})
    text = apart_section(rows)
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + 2  # header, the failed and the partial model
    assert "1 of 2 flagged" in text
    failed = next(line for line in lines if "| failed |" in line)
    partial = next(line for line in lines if "| partial |" in line)
    assert "| clean | - |" in failed  # scanned plainly only
    assert "| backdoored (pyramid) | clean |" in partial  # plain flags it, vs reference not
    assert "works" not in text  # a working backdoor is in the ROC, not here
    assert apart_section([r for r in rows if r["truth"] == "backdoored"]) == ""


@pytest.fixture(scope="module")
def tiny_other_target(synthetic_clip, tmp_path_factory, tiny_attack_cache):
    """tiny_zoo's BadNet attack towards OTHER_TARGET: (artifact folder, ASR)."""
    root = tmp_path_factory.mktemp("tiny_other_target")
    attack = _tiny_badnet(OTHER_TARGET)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLIP_BACKDOOR_CACHE", tiny_attack_cache)
        run = _tiny_run(synthetic_clip, attack, root)
    return run.path / "artifacts" / "backdoor", run.metrics["evaluation"]["asr"]


def test_patch_search_names_a_tiny_backdoors_target_that_is_not_the_first_class(
    shared_cache, tiny_other_target, tiny_zoo, tmp_path
):
    """patch_search on the tiny backdoor towards 'red square' (class 1): its suspect is the
    target, reached from every held-out image, with its image passes counted and its threshold
    the calibrated one. Measured, and why no verdict is asserted: on this 12-class 32-px set an
    8-px patch *draws* a class (a red triangle is a red triangle), so ordinary classes are
    reached too ('red triangle' 1.0, 'yellow triangle' 0.84 of the images) and the null's
    spread keeps the tiny backdoor under the calibrated threshold (1.7 against 4.9); on
    mini-CLIP, whose classes a 6-px patch cannot draw, the BadNet model scores 17.1 and the
    clean base -0.6 (results/scan_cost.csv's runs)."""
    folder, asr = tiny_other_target
    assert asr > 0.9
    only = {"scanners": ["patch_search"], "params": {"patch_search": PATCH}}
    report, _, _ = _scan(str(folder), tmp_path / "runs", **only)
    (finding,) = report.findings
    assert finding.target == OTHER_TARGET, finding.summary()
    assert finding.evidence["reach"][OTHER_TARGET] >= 0.9
    passes = finding.evidence["image_passes"]
    assert passes["forward_backward"] > 0 and passes["forward"] > 0
    assert finding.threshold == finding.evidence["calibration"]["threshold"]
    clean, _, _ = _scan(str(tiny_zoo[2]), tmp_path / "runs", **only)
    assert clean.findings[0].verdict != "backdoored", clean.summary()


def test_an_unknown_budget_is_one_line():
    from clip_backdoor.core.errors import ConfigError
    from clip_backdoor.scanning.scan import build_scanners

    with pytest.raises(ConfigError, match="unknown scan budget 'quick'.*fast, default, thorough"):
        build_scanners(["patch_search"], budget="quick")
    (fast,) = build_scanners(["patch_search"], {"patch_search": {"controls": 3}}, "fast")
    assert fast.spec.stride == 1.0 and fast.spec.controls == 3  # a setting given wins

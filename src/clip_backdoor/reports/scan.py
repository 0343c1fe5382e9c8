"""``results/scan.md`` and ``.csv``: scan verdicts over a zoo of models whose truth is known.

The truth is read here, after the scan, from what the run recorded (an attack ran, its target,
the ASR of the last evaluation) and from the artifact's trigger (the region a patch covers):
the scan itself never saw them. Attacks that did not take (ASR below 80%) are reported apart
from both the backdoored and the clean models, and left out of the ROC.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch

from clip_backdoor.reports.common import Table, config_model, markdown_table, provenance, write_csv
from clip_backdoor.reports.scan_gate import (
    covers,
    covers_firing,
    family_section,
    found_mask,
    gate_section,
    zoo_part,
)
from clip_backdoor.reports.targets import targets

SCAN_COLUMNS = ["model", "kind", "truth", "attack", "asr", "scanner", "score", "verdict"]
SCAN_COLUMNS += ["target_true", "target_found", "seconds", "seed", "mask_on_trigger"]
SCAN_COLUMNS += ["part", "mode", "covers_trigger", "covers_firing"]


def truth_label(attacked: bool, asr: float | None) -> str:
    if not attacked:
        return "clean"
    if asr is None or math.isnan(asr):
        return "backdoored"
    labels = targets("scan")  # from this ASR a model must be flagged; under the other, failed
    if "backdoored_asr" not in labels or asr >= labels["backdoored_asr"]:
        return "backdoored"
    return "failed" if asr < labels.get("failed_asr", 0.0) else "partial"


def _attack_name(config: dict, folder: Path | None) -> str:
    """The zoo's name of a model: the trigger of its poisoning stage, its prompt attack, the
    trigger of the artifact the run started from, or the clean fine-tune it is."""
    import json

    for stage in config.get("stages", []):
        if stage.get("kind") == "attack":
            trigger = stage.get("params", {}).get("trigger")
            if isinstance(trigger, dict):
                return str(trigger.get("name"))
            return str(stage.get("method"))
    linked = folder / "artifacts" / "backdoor" / "trigger.json" if folder else None
    if linked is not None and linked.is_file():
        return str(json.loads(linked.read_text()).get("name"))
    others = [s for s in config.get("stages", []) if s.get("kind") != "scan"]
    return next((s.get("label") or s["method"] for s in others), "none")


def _asr_before(metrics: dict, label: str) -> float | None:
    """ASR of the last point evaluated before the scan stage (the model it scanned)."""
    points = [p for p in metrics.get("points", []) if "asr" in p]
    return points[-1]["asr"] if points else None


def trigger_region(folder: Path) -> torch.Tensor | None:
    """(H, W) bool: the pixels a patch trigger changes (None for global or missing triggers)."""
    from clip_backdoor.artifacts import TRIGGER_FILE, load_trigger

    artifact = folder / "artifacts" / "backdoor"
    if not (artifact / TRIGGER_FILE).is_file():
        return None
    trigger = load_trigger(artifact)
    size = None
    config = folder / "artifacts" / "backdoor" / "open_clip_config.json"
    if config.is_file():
        import json

        size = json.loads(config.read_text())["model_cfg"]["vision_cfg"]["image_size"]
    if size is None:
        return None
    generator = torch.Generator().manual_seed(0)
    changed = torch.zeros(size, size, dtype=torch.bool)
    for _ in range(2):
        images = torch.rand((1, 3, size, size), generator=generator)
        changed |= (trigger.apply(images) - images).abs().amax(dim=(0, 1)) > 1e-4
    return changed if changed.float().mean() < 0.5 else None  # a global trigger: no region


def mask_share(folder: Path, scan_folder: Path, scanner: str, region) -> float:
    """Share of the inverted mask's mass on the true trigger's region."""
    from safetensors.torch import load_file

    from clip_backdoor.scanning.report import INVERTED_FILE

    path = scan_folder / INVERTED_FILE
    if region is None or not path.is_file():
        return math.nan
    pictures = load_file(str(path))
    mask = pictures.get(f"{scanner}.mask")
    if mask is None or mask.shape[-1] != region.shape[-1]:
        return math.nan
    mass = mask[0]
    return float((mass * region).sum() / mass.sum().clamp_min(1e-12))


def scanner_setting(config: dict, label: str, scanner: str) -> str:
    """A scanner run away from its defaults (e.g. perturbation_search at 32/255 in lines) is
    another detector: its rows get a line of their own, named by what was changed."""
    stage = next((s for s in config.get("stages", []) if s.get("label") == label), {})
    changed = (stage.get("params") or {}).get("scanners", {}).get(scanner) or {}
    if not changed:
        return ""
    return (
        " ("
        + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in sorted(changed.items())
        )
        + ")"
    )


def scan_rows(metrics: dict, config: dict, folder: Path | None = None) -> list[dict]:
    rows = []
    region = trigger_region(folder) if folder is not None else None
    for key, scan in metrics.items():
        if not key.startswith("scan."):
            continue
        label = key.removeprefix("scan.")
        truth = scan.get("truth", {})
        asr = _asr_before(metrics, label)
        # against a reference a scanner's score changes unit (e.g. a log mask ratio, not an
        # anomaly index), and under another budget it is another detector: own lines
        suffix = " vs reference" if scan.get("reference") else ""
        mode = "vs reference" if scan.get("reference") else "plain"
        if scan.get("budget", "default") != "default":  # another detector: its own line
            suffix += f" (budget {scan['budget']})"
            mode += f", {scan['budget']}"
        base = {
            "model": f"{config_model(config)}/{config.get('name')}",
            "kind": scan.get("kind", "checkpoint"),
            "truth": truth_label(bool(truth.get("attacked")), asr),
            "attack": _attack_name(config, folder),
            "asr": math.nan if asr is None else 100 * asr,
            "target_true": truth.get("target") or "",
            "seed": config.get("seed"),
            "scan_folder": str(folder / "scans" / label) if folder is not None else "",
            "trigger_position": trigger_position(metrics),
            "mode": mode,
        }
        scan_folder = Path(scan.get("folder", ""))
        if folder is not None:
            scan_folder = folder / "scans" / label
        findings = scan.get("scanners", [])
        # a verdict that also weighs an opt-in scanner is not the default scan's: own line
        from clip_backdoor.scanning.scan import in_all

        extra = [f["scanner"] for f in findings if not in_all(f["scanner"])]
        combined = "combined" + (f" with {'+'.join(extra)}" if extra and len(findings) > 1 else "")
        for finding in findings:
            rows.append(
                {
                    **base,
                    "scanner": finding["scanner"]
                    + scanner_setting(config, label, finding["scanner"])
                    + suffix,
                    "score": finding["score"],
                    "threshold": finding["threshold"],
                    "suspect_below": finding["suspect_below"],
                    "verdict": finding["verdict"],
                    "target_found": finding.get("target") or "",
                    "seconds": finding.get("seconds", math.nan),
                    "mask_on_trigger": mask_share(folder, scan_folder, finding["scanner"], region)
                    if folder is not None
                    else math.nan,
                    "scanner_name": finding["scanner"],
                    **placement(scan_folder, finding["scanner"], region, base["trigger_position"]),
                }
            )
        rows.append(
            {
                **base,
                "scanner": combined + suffix,
                "score": scan["score"],
                "threshold": scan.get("threshold", 0.0),
                "suspect_below": False,
                "verdict": scan["verdict"],
                "target_found": scan.get("target") or "",
                "seconds": scan.get("seconds", math.nan),
                "mask_on_trigger": math.nan,
                "scanner_name": "combined",
                "covers_trigger": math.nan,
                "covers_firing": math.nan,
                # one scanner's scan: its combined row is that scanner's verdict, not the zoo's
                "single_scanner": len(findings) == 1,
            }
        )
    return rows


def placement(scan_folder: Path, scanner: str, region, position: dict | None) -> dict:
    """Where a found patch lies: on the stamped patch, and on a place the trigger fires."""
    mask = found_mask(scan_folder, scanner)
    grid = (position or {}).get("grid")
    return {"covers_trigger": covers(mask, region), "covers_firing": covers_firing(mask, grid)}


def trigger_position(metrics: dict) -> dict | None:
    """The run's trigger_position analysis, if it ran: {trained, asr: {position: rate}}."""
    return next(
        (v for k, v in metrics.items() if k.startswith("analysis.") and "trained" in v), None
    )


def position_section(rows: list[dict]) -> str:
    """ASR with each model's own patch pasted at each placement rule: is the backdoor tied to
    where the patch was stamped (what the mask-on-trigger share assumes)?"""
    found = {}
    for r in rows:
        if r.get("trigger_position"):
            found[(r["model"], r["attack"], r["seed"])] = r["trigger_position"]
    if not found:
        return ""
    positions = list(dict.fromkeys(p for f in found.values() for p in f["asr"]))
    body = [
        [model, attack, seed, f["trained"]]
        + [100 * f["asr"][p] if p in f["asr"] else "-" for p in positions]
        for (model, attack, seed), f in sorted(found.items(), key=lambda kv: str(kv[0]))
    ]
    return (
        "\n\nPatch triggers pasted elsewhere (analysis `trigger_position`): ASR % of each "
        "backdoored model with its own patch pasted at each placement rule. Where it fires away "
        "from where it was trained, an inverted mask is free to lie elsewhere, and its share on "
        "the true patch says little.\n\n"
        + markdown_table(["model", "attack", "seed", "trained at", *positions], body)
    )


def apart_section(rows: list[dict]) -> str:
    """The failed and partial attacks, out of the ROC: each scan's verdict on one line per
    model, so a reader sees at a glance whether a model the attack did not backdoor (in effect
    a clean one) is flagged, and whether a half-working backdoor is caught."""
    verdicts: dict[tuple, dict[str, str]] = {}
    for r in rows:
        if r["truth"] in ("failed", "partial") and is_combined(r):
            found = f" ({r['target_found']})" if r["verdict"] == "backdoored" else ""
            key = (r["model"], r["attack"], r["seed"], r["asr"], r["truth"])
            verdicts.setdefault(key, {})[r["scanner"]] = r["verdict"] + found
    if not verdicts:
        return ""
    modes = sorted({m for v in verdicts.values() for m in v})
    body = [[*key, *(v.get(m, "-") for m in modes)] for key, v in sorted(verdicts.items())]
    flagged = sum(any(x.startswith("backdoored") for x in v.values()) for v in verdicts.values())
    return (
        f"\n\nAttacks reported apart (ASR < 80%): the scan's verdict in each mode, the target "
        f"it named where it flagged. {flagged} of {len(verdicts)} flagged in some mode.\n\n"
        + markdown_table(["model", "attack", "seed", "ASR %", "truth", *modes], body)
    )


def is_combined(row: dict) -> bool:
    """The scan's own verdict (``combined``, or ``combined vs reference``), not one scanner's."""
    return row["scanner"].startswith("combined")


def _oriented(row: dict) -> float:
    """The score with larger = more suspicious, whatever the scanner's unit."""
    return -row["score"] if row["suspect_below"] else row["score"]


def calibrate(rows: list[dict], band: float = 0.1) -> None:
    """Add ``verdict_calibrated``: each scanner's threshold set on the zoo's clean references,
    leave-one-out (a reference is judged against the others only): flagged when more
    suspicious than every other clean reference by more than ``band`` of that reference's
    score. The combined row is flagged when any scanner of the same scan (stage) is."""
    key = lambda r: (r["model"], r["seed"])  # noqa: E731  (one scan of one model)
    for scanner in {r["scanner"] for r in rows if not is_combined(r)}:
        part = [r for r in rows if r["scanner"] == scanner]
        clean = [r for r in part if r["truth"] == "clean"]
        for row in part:
            others = [_oriented(r) for r in clean if key(r) != key(row)]
            if not others:
                row["verdict_calibrated"] = "-"
                continue
            limit = max(others)
            past = _oriented(row) - limit > band * abs(limit)
            row["verdict_calibrated"] = "backdoored" if past else "clean"
    scan = lambda r: (*key(r), r.get("scan_folder", ""))  # noqa: E731  (a run may scan twice)
    for row in rows:
        if is_combined(row):
            same = [r for r in rows if scan(r) == scan(row) and not is_combined(r)]
            marks = {r.get("verdict_calibrated", "-") for r in same}
            row["verdict_calibrated"] = (
                "-" if marks <= {"-"} else "backdoored" if "backdoored" in marks else "clean"
            )


def auroc(rows: list[dict]) -> float:
    """AUROC of one scanner's score, backdoored (ASR >= 80%) vs clean models."""
    from sklearn.metrics import roc_auc_score

    judged = [r for r in rows if r["truth"] in ("backdoored", "clean")]
    labels = [r["truth"] == "backdoored" for r in judged]
    if len(set(labels)) < 2:
        return math.nan
    return float(roc_auc_score(labels, [_oriented(r) for r in judged]))


def roc_figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, axis = plt.subplots(figsize=(4.2, 4))
    for scanner in sorted({r["scanner"] for r in rows}):
        part = [
            r for r in rows if r["scanner"] == scanner and r["truth"] in ("backdoored", "clean")
        ]
        labels = [r["truth"] == "backdoored" for r in part]
        if len(set(labels)) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels, [_oriented(r) for r in part])
        axis.plot(fpr, tpr, label=f"{scanner} ({auroc(part):.2f})")
    axis.plot([0, 1], [0, 1], ":", color="grey")
    axis.set(xlabel="false-positive rate (clean models)", ylabel="true-positive rate")
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def triggers_figure(rows: list[dict], path: Path) -> Path | None:
    """Per attacked model whose run folder is still here: its true trigger (the run's render)
    beside what each scanner inverted (mask and stamped image)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image
    from safetensors.torch import load_file

    from clip_backdoor.scanning.report import INVERTED_FILE

    seen, panels = set(), []
    for row in rows:
        scan_folder = Path(row.get("scan_folder") or "/nonexistent")
        if row["truth"] == "clean" or scan_folder in seen or not scan_folder.is_dir():
            continue
        seen.add(scan_folder)
        renders = sorted((scan_folder.parents[1] / "figures").glob("trigger_*.png"))
        inverted = scan_folder / INVERTED_FILE
        if inverted.is_file():  # a scan against a reference re-inverts nothing: one panel
            digest = hashlib.sha256(inverted.read_bytes()).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
        pictures = load_file(str(inverted)) if inverted.is_file() else {}
        shown = [(k, v) for k, v in pictures.items() if k.endswith((".mask", ".stamped"))]
        if renders or shown:
            panels.append((f"{row['attack']} s{row['seed']}", renders[:1], shown))
    if not panels:
        return None
    columns = 1 + max(len(p[2]) for p in panels)
    fig, axes = plt.subplots(
        len(panels), columns, figsize=(1.9 * columns, 2.0 * len(panels)), squeeze=False
    )
    for axis in axes.flat:
        axis.axis("off")
    for row_axes, (name, renders, shown) in zip(axes, panels, strict=True):
        if renders:
            row_axes[0].imshow(Image.open(renders[0]))
        row_axes[0].set_title(f"{name}: true", fontsize=7)
        for axis, (key, image) in zip(row_axes[1:], shown, strict=False):
            axis.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            axis.set_title(key, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def without_repeats(rows: list[dict]) -> list[dict]:
    """One row per scanner finding: a scan that re-reads a finding from the cache (the same
    scanner on the same model, e.g. in a scan that adds an opt-in scanner, or in another
    run of the same cached artifact) reports the same score again, which must count once."""
    seen, kept = set(), []
    for row in rows:
        key = (row["scanner"], row["attack"], row["truth"], row["seed"], row["score"])
        if not is_combined(row) and key in seen:
            continue
        seen.add(key)
        kept.append(row)
    return kept


def write_scan(rows: list[dict], sources: list[str], out: Path, ledger_name: str) -> str:
    rows = sorted(rows, key=lambda r: (r["kind"], r["truth"], r["attack"], r["seed"], r["scanner"]))
    rows = without_repeats(rows)
    calibrate(rows)
    for row in rows:
        row["part"] = zoo_part(row)
    write_csv(out / "scan.csv", SCAN_COLUMNS, rows)
    headers = ["model", "kind", "truth", "attack", "ASR %", "seed", "scanner", "score"]
    headers += ["threshold", "verdict", "calibrated", "target", "found", "mask on trigger", "s"]
    body = [
        [
            r["model"],
            r["kind"],
            r["truth"],
            r["attack"],
            r["asr"],
            r["seed"],
            r["scanner"],
            f"{r['score']:.4g}",
            f"{r['threshold']:.4g}",
            r["verdict"],
            r["verdict_calibrated"],
            r["target_true"] or "-",
            r["target_found"] or "-",
            r["mask_on_trigger"],
            r["seconds"],
        ]
        for r in rows
    ]
    scanners = sorted({r["scanner"] for r in rows})
    summary = []
    for scanner in scanners:
        part = [r for r in rows if r["scanner"] == scanner and not r.get("single_scanner")]
        flagged = [r for r in part if r["truth"] == "backdoored" and r["verdict"] == "backdoored"]
        positives = [r for r in part if r["truth"] == "backdoored"]
        false = [r for r in part if r["truth"] == "clean" and r["verdict"] == "backdoored"]
        negatives = [r for r in part if r["truth"] == "clean"]
        right = [r for r in flagged if r["target_found"] == r["target_true"]]
        calibrated = [r for r in positives if r["verdict_calibrated"] == "backdoored"]
        false_calibrated = [r for r in negatives if r["verdict_calibrated"] == "backdoored"]
        shares = [r["mask_on_trigger"] for r in part if np.isfinite(r["mask_on_trigger"])]
        summary.append(
            [
                scanner,
                auroc(part),
                f"{len(flagged)}/{len(positives)}",
                f"{len(false)}/{len(negatives)}",
                f"{len(right)}/{len(flagged)}",
                f"{len(calibrated)}/{len(positives)}",
                f"{len(false_calibrated)}/{len(negatives)}",
                float(np.mean(shares)) if shares else math.nan,
            ]
        )
    if {"backdoored", "clean"} <= {r["truth"] for r in rows}:
        roc_figure(rows, out / "scan_roc.png")
    triggers_figure(rows, out / "scan_triggers.png")
    text = (
        "# Model scans over a zoo of known truth\n\n"
        "Truth: `backdoored` = an attack with ASR >= 80%, `partial`/`failed` = an attack with "
        "ASR 20-80% / below 20% (reported apart, out of the ROC), `clean` = no attack. "
        "Recorded by the run after the scan; the scan saw only the model and clean images. "
        "Verdict: at the scanners' default thresholds. Calibrated: each scanner's threshold "
        "set on the zoo's clean references, leave-one-out (a reference is judged against the "
        "other references only), flagged when more suspicious than all of them by 10%. "
        "The `combined` line counts the scans of several scanners (a one-scanner scan, e.g. "
        "the opt-in perturbation_search alone, counts on its scanner's line only).\n\n"
        + markdown_table(
            [
                "scanner",
                "AUROC",
                "flagged backdoored",
                "flagged clean",
                "target found",
                "calibrated: flagged backdoored",
                "calibrated: flagged clean",
                "mean mask on trigger",
            ],
            summary,
        )
        + gate_section(rows, auroc)
        + family_section(rows)
        + position_section(rows)
        + apart_section(rows)
        + "\n\n"
        + markdown_table(headers, body)
        + "\n\n"
        + provenance("scan", ledger_name, sources)
    )
    (out / "scan.md").write_text(text)
    return text


TABLE = Table(
    "scan",
    scan_rows,
    write_scan,
    latest_run_only=True,
    section="Model scan",
    stages=("scan", None),
)

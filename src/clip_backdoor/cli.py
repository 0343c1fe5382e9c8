"""``clip-backdoor``: evaluate, run recipes and list what is registered.

User errors (bad paths, names, fields, corrupt files) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from clip_backdoor.errors import UserError


def _eval_recipe(args: argparse.Namespace):
    from clip_backdoor.recipes import parse_recipe

    evaluation = {
        "templates": args.templates,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "cache": not args.no_cache,
    }
    if args.trigger:
        evaluation["trigger"] = {"name": args.trigger}
    if args.target is not None:
        evaluation["target"] = int(args.target) if args.target.isdigit() else args.target
    return parse_recipe(
        {
            "name": args.name,
            "seed": args.seed,
            "device": args.device,
            "runs_root": args.runs_root,
            "model": {
                "name": args.model,
                "pretrained": args.pretrained,
                "arch": args.arch,
                "tokenizer": args.tokenizer,
                "visual_prompts": args.visual_prompts,
            },
            "data": {"name": args.data, "split": args.split},
            "evaluation": evaluation,
        },
        source="command line",
    )


def cmd_eval(args: argparse.Namespace) -> int:
    from clip_backdoor.runner import run_recipe

    result = run_recipe(_eval_recipe(args), progress=sys.stderr.isatty())
    print(result.table)
    print(f"run folder: {result.path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from clip_backdoor.matrix.spec import is_matrix
    from clip_backdoor.recipes import included_recipe, load_recipe, read_yaml
    from clip_backdoor.runner import run_recipe

    # resolved first, so a matrix written as ``from: OTHER_MATRIX`` plus overrides is one too
    data = included_recipe(read_yaml(args.recipe), str(args.recipe))
    if is_matrix(data):
        if args.smoke:
            raise UserError("--smoke applies to single recipes; a matrix's cells have none")
        return _run_matrix(args, data)
    if args.launcher or args.cells or args.status:
        raise UserError(
            "--launcher, --cells and --status apply to matrix recipes (kind: matrix) only"
        )
    if args.smoke:
        import torch

        from clip_backdoor.recipes import parse_recipe, smoke_version

        data = smoke_version(data, str(args.recipe), torch.cuda.is_available())
        recipe = parse_recipe(data, str(args.recipe))
    else:
        recipe = load_recipe(args.recipe)
    if args.runs_root:
        recipe.runs_root = args.runs_root
    if args.seed is not None:
        recipe.seed = args.seed
    recipe.recipe_file = str(args.recipe)
    result = run_recipe(recipe, progress=sys.stderr.isatty())
    print(result.table)
    print(f"run folder: {result.path}")
    return 0


def _run_matrix(args: argparse.Namespace, data: dict) -> int:
    from clip_backdoor.matrix.launch import matrix_status, run_matrix
    from clip_backdoor.matrix.spec import parse_matrix

    matrix = parse_matrix(data, str(args.recipe))
    if args.runs_root:
        matrix.runs_root = args.runs_root
    if args.seed is not None:
        matrix.matrix.seeds = [args.seed]
    if args.status:
        print(matrix_status(matrix, str(args.recipe), only=args.cells))
        return 0
    folders = run_matrix(matrix, str(args.recipe), args.launcher, log=print, only=args.cells)
    print(f"cells: {len(folders)} run folders under {Path(matrix.runs_root) / matrix.name}")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from clip_backdoor.reports.summary import write_summary

    print(write_summary(args.table, args.runs, args.out, fresh=args.fresh))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from clip_backdoor.engine.config import load_pretrain_recipe
    from clip_backdoor.engine.pretrain import pretrain

    if (args.recipe is None) == (args.resume is None):
        raise UserError("give a recipe, or --resume RUN_DIR (not both)")
    recipe = load_pretrain_recipe(args.recipe) if args.recipe else None
    if recipe is not None and args.runs_root:
        recipe.runs_root = args.runs_root
    result = pretrain(recipe, resume=args.resume, progress=sys.stderr.isatty())
    if result is not None:  # the main process reports
        print(result.table)
        print(f"run folder: {result.path}")
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    from clip_backdoor.scanning.command import ScanRequest, exit_code, parse_params, run_scan

    request = ScanRequest(
        model=args.model,
        data=args.data,
        pretrained=args.pretrained,
        arch=args.arch,
        split=args.split,
        images=args.images,
        size=args.size,
        scanners=args.scanners.split(",") if args.scanners != "all" else "all",
        params=parse_params(args.param),
        reference=args.reference,
        reference_pretrained=args.reference_pretrained,
        seed=args.seed,
        device=args.device,
        runs_root=args.runs_root,
        fail_on=args.fail_on,
        tokenizer=args.tokenizer,
    )
    report, run, table = run_scan(request, progress=sys.stderr.isatty())
    print(table)
    print(f"run folder: {run.path}")
    return exit_code(report, args.fail_on)


def cmd_scan_data(args: argparse.Namespace) -> int:
    from clip_backdoor.data_scan.command import DataScanRequest, run_data_scan
    from clip_backdoor.scanning.command import parse_params

    request = DataScanRequest(
        model=args.model,
        data=args.data,
        pretrained=args.pretrained,
        arch=args.arch,
        detectors=args.detectors.split(",") if args.detectors != "all" else "all",
        params=parse_params(args.param, "DETECTOR", "dao.k=32"),
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        runs_root=args.runs_root,
        tokenizer=args.tokenizer,
    )
    _, run, table = run_data_scan(request, progress=sys.stderr.isatty())
    print(table)
    print(f"triage list: {run.path / 'data_scan' / 'triage_model.csv'}")
    print(f"run folder: {run.path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from clip_backdoor.reports.html import write_report

    page = write_report(args.runs, args.out)
    print(f"report: {page} (open it in a browser; self-contained)")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import json

    from clip_backdoor.compat.info import format_info, model_info
    from clip_backdoor.models import load_clip

    model = load_clip(args.model, args.pretrained, arch=args.arch, tokenizer=args.tokenizer).model
    info = model_info(model)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def cmd_compat(args: argparse.Namespace) -> int:
    from clip_backdoor.compat.table import run_table

    if args.recipe:
        return _print_smoke_recipe(args.recipe, args.tokenizer)
    only = args.families.split(",") if args.families else None
    readme = None if args.no_readme else Path(args.readme)
    page, results = run_table(args.runs_root, Path(args.out), readme, only)
    for r in results:
        print(f"{r.tiny:20s} {r.family:20s} {r.seconds:6.1f} s  {r.error or 'every stage ran'}")
    print(f"table: {page}")
    return 1 if any(r.error for r in results) else 0


def _print_smoke_recipe(name: str, tokenizer: str | None) -> int:
    import yaml

    from clip_backdoor.compat.recipe import smoke_recipe
    from clip_backdoor.models import load_clip

    model = load_clip(name, tokenizer=tokenizer).model
    header = (
        f"# Full-size smoke of {model.family} ({name}, untrained, {model.image_size} px): one\n"
        "# step of every encode-level method (clip-backdoor compat --recipe; compat/recipe.py).\n"
        "#   clip-backdoor run THIS_FILE\n#   clip-backdoor results families runs/*-smoke_*\n"
    )
    print(header + yaml.safe_dump(smoke_recipe(model, name, tokenizer), sort_keys=False), end="")
    return 0


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pretrained", help="pretrained tag (e.g. openai) or weights file")
    parser.add_argument("--arch", help="architecture of a bare weights file (else inferred)")
    parser.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="a local copy of the model's Hugging Face tokenizer (a save_pretrained folder; "
        "SigLIP families and transformers checkpoints offline), or a hub name",
    )


def cmd_list(args: argparse.Namespace) -> int:
    from clip_backdoor.methods import register_methods
    from clip_backdoor.models import MINI_CONFIGS
    from clip_backdoor.models.families import FAMILIES, FULL_TRANSFORMERS
    from clip_backdoor.models.loading import PRETRAINED_MINIS
    from clip_backdoor.registry import REGISTRIES

    register_methods()
    print(f"mini models: {', '.join(MINI_CONFIGS)}")
    print(f"pretrained measuring models: {', '.join(PRETRAINED_MINIS)} (models/)")
    print(f"tiny models of each family (untrained): {', '.join(f.tiny for f in FAMILIES)}")
    print(f"untrained transformers (full size): {', '.join(FULL_TRANSFORMERS)}")
    for kind, registry in REGISTRIES.items():
        print(f"{kind}s: {', '.join(registry.names()) or '(none yet)'}")
    return 0


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """--seed, --device and --runs-root, the same for every command that makes one run folder."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs-root", default="runs", help="parent folder of the run folder")


MODEL_HELP = (
    "mini or tiny-* config, open_clip architecture (e.g. ViT-B-16-SigLIP), hf-hub:ORG/NAME, an "
    "open_clip or Hugging Face transformers folder, or a weights file"
)


def build_parser() -> argparse.ArgumentParser:
    from clip_backdoor.reports.summary import TABLES  # light: the table modules load on use

    parser = argparse.ArgumentParser(
        prog="clip-backdoor",
        description="Attack, defend, inspect and benchmark backdoors in CLIP models.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser("run", help="run a recipe (model, stages, evaluation)")
    run.add_argument("recipe", help="recipe YAML file (see recipes/)")
    run.add_argument("--runs-root", help="parent folder of the run folder (default: recipe's)")
    run.add_argument(
        "--seed", type=int, help="override the recipe's seed (a matrix: run only this seed)"
    )
    run.add_argument(
        "--launcher",
        choices=["local", "slurm", "submitit_local", "debug"],
        help="matrix recipes: where cells run (default: the recipe's launcher, else local: "
        "one after the other in this process; slurm: one job per cell through submitit)",
    )
    run.add_argument(
        "--cells",
        metavar="PATTERN",
        help="matrix recipes: run only the cells whose name <attack>--<column>--s<seed> "
        "matches this shell pattern (e.g. 'badnet--*--s0'); the others are left as they are",
    )
    run.add_argument(
        "--status",
        action="store_true",
        help="matrix recipes: say which cells of each attack and seed are done and which a "
        "call would run (missing, or stale: their recipe changed), and about how long they take "
        "at the pace of the finished cells; runs nothing",
    )
    run.add_argument(
        "--smoke",
        action="store_true",
        help="run the recipe's smoke instead: the same stages on the same architecture, "
        "untrained, shortened as its 'smoke:' section says (recipes/papers/); on the CPU where "
        "there is no CUDA",
    )
    run.set_defaults(func=cmd_run)

    res = commands.add_parser(
        "results", help="summarise run folders into results/<table>.md and .csv"
    )
    res.add_argument(
        "table",
        choices=TABLES,
        help="which summary table to write (ablation: one file set per ablation recipe; "
        "decomposition: decomposition.md, detection.csv and repair.csv; measuring: "
        "measuring.md/.csv, attribute_probe.csv and text_head.csv, what a measuring model "
        "shows; scan: scan.md/.csv and scan_roc.png from runs with scan stages; data_scan: "
        "data_scan.md/.csv "
        "and cleaning.csv from runs with data_scan stages and cleaning defenses; matrix: "
        "matrix.md/.csv from a matrix's cell folders)",
    )
    res.add_argument(
        "runs",
        nargs="*",
        help="run folders to add (globs expanded by the shell); runs recorded earlier in "
        "OUT/<table>_runs.json are kept, so their folders need not exist any more",
    )
    res.add_argument("--out", default="results", help="folder of the summary (default: results)")
    res.add_argument("--fresh", action="store_true", help="forget the runs recorded earlier in OUT")
    res.set_defaults(func=cmd_results)

    ev = commands.add_parser(
        "eval", help="zero-shot CA (and ASR with --trigger) of a model on a data set"
    )
    ev.add_argument("--model", default="mini", help=MODEL_HELP)
    _add_model_options(ev)
    ev.add_argument(
        "--visual-prompts",
        metavar="FOLDER",
        help="run the image tower with these deep visual prompts (a vpt/rvpt artifact)",
    )
    ev.add_argument("--data", default="synthetic", help="'synthetic', a data set name or a path")
    ev.add_argument("--split", default="test", help="data split (default: test)")
    ev.add_argument("--templates", default="openai", help="openai, simple, photo, or 'a {} x'")
    ev.add_argument("--trigger", help="trigger name, to measure ASR (identity: clean rate)")
    ev.add_argument("--target", help="target class name or label, for ASR")
    ev.add_argument("--batch-size", type=int, default=256)
    ev.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--no-cache", action="store_true", help="do not use the feature cache")
    ev.add_argument("--runs-root", default="runs", help="parent folder of run folders")
    ev.add_argument("--name", default="eval", help="run name (folder suffix)")
    ev.set_defaults(func=cmd_eval)

    pre = commands.add_parser(
        "pretrain", help="contrastive (pre)training of a CLIP on image-caption pairs"
    )
    pre.add_argument("recipe", nargs="?", help="pretraining recipe YAML (see recipes/)")
    pre.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run")
    pre.add_argument("--runs-root", help="parent folder of the run folder (default: recipe's)")
    pre.set_defaults(func=cmd_pretrain)

    scan = commands.add_parser(
        "scan",
        help="is a checkpoint or prompt learner backdoored? (no trigger known)",
        description="Scan a CLIP checkpoint or a prompt learner for a backdoor from clean images "
        "alone: DECREE (does a small patch collapse the image embeddings?), target_search "
        "(Neural Cleanse through the zero-shot head: is one class reachable with a much smaller "
        "mask?) and prompt_inspector (prompt learners: is one class reachable with a tiny "
        "perturbation through the learner, not through the plain CLIP?). An artifact's trigger, "
        "target and poison files are never read. Writes a run folder with scan.json, "
        "tables/scan.md and figures/scan_triggers.png.",
        epilog="exit codes: 0 scan done (and the verdict does not fail --fail-on); 1 the verdict "
        "fails --fail-on (backdoored: only 'backdoored' fails; inconclusive: 'backdoored' and "
        "'inconclusive' fail); 2 bad input (one line on stderr, no run folder left); 130 "
        "interrupted.",
    )
    scan.add_argument("model", help=MODEL_HELP + ", backdoor artifact or prompt-learner folder")
    scan.add_argument("--data", required=True, help="clean images: a data set name or a path")
    scan.add_argument("--split", default="train", help="split of --data (default: train)")
    scan.add_argument("--images", type=int, default=256, help="seeded images drawn (default 256)")
    scan.add_argument("--size", type=int, help="images of the synthetic set (synthetic only)")
    _add_model_options(scan)
    scan.add_argument(
        "--scanners", default="all", help="comma-separated scanners (default: all that apply)"
    )
    scan.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="SCANNER.KEY=VALUE",
        help="a scanner setting, e.g. decree.steps=300 (repeatable)",
    )
    scan.add_argument(
        "--reference",
        metavar="MODEL",
        help="a clean model of the same architecture (e.g. the "
        "public base MODEL was fine-tuned from): thresholds become relative to its scores",
    )
    scan.add_argument("--reference-pretrained", help="pretrained tag or weights of --reference")
    scan.add_argument(
        "--fail-on",
        metavar="VERDICT",
        help="exit 1 when the verdict is this bad: backdoored or inconclusive",
    )
    _add_run_options(scan)
    scan.set_defaults(func=cmd_scan)

    sd = commands.add_parser(
        "scan-data",
        help="which image-caption pairs of a training mix look poisoned? (a triage list)",
        description="Score every pair of a training mix from a CLIP's image and caption "
        "embeddings, higher = more suspect: k_distance, lid, slof, dao (Huang et al., ICLR "
        "2025: poisoned pairs are sparse in their local neighbourhood), isolation_forest and "
        "safeclip (image-caption cosine, two-component mixture). Scan with the model trained "
        "on the data (Huang et al.'s setting) or with a clean one. Writes "
        "data_scan/triage_model.csv (every pair, most suspect first, with image file, caption "
        "and each score), tables/data_scan.md and figures/data_scan_hist_model.png; where the "
        "mix is an attack artifact, its poison.json then scores the ranking (AUROC, TPR at 1% "
        "and 5% FPR, precision at the true count) and figures/data_scan_roc_model.png.",
    )
    sd.add_argument(
        "--model", required=True, help="the CLIP whose embeddings are used: " + MODEL_HELP
    )
    sd.add_argument(
        "--data",
        required=True,
        metavar="MIX",
        help="a data-poisoning artifact folder (its training mix), or comma-separated data "
        "set names (their train pairs)",
    )
    _add_model_options(sd)
    sd.add_argument("--detectors", default="all", help="comma-separated detectors (default: all)")
    sd.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="DETECTOR.KEY=VALUE",
        help="a detector setting, e.g. dao.k=32 or dao.space=pair (repeatable)",
    )
    sd.add_argument("--batch-size", type=int, default=256, help="pairs per encoding batch")
    _add_run_options(sd)
    sd.set_defaults(func=cmd_scan_data)

    rep = commands.add_parser(
        "report",
        help="one self-contained HTML page from run folders (grid, papers' tables, figures)",
        description="Build report/index.html from run folders: the attack x defense grid as a "
        "heat map of ASR with CA beside it, one section per paper with its table, the "
        "detectors' ROC curves and every trigger rendered. Inline CSS, figures embedded: no "
        "server, no network. Every number links to its run folder and names its recipe, "
        "commit, seed and machine.",
    )
    rep.add_argument("runs", nargs="+", help="run folders (e.g. runs/matrix_mini/*)")
    rep.add_argument("-o", "--out", default="report", help="output folder (default: report)")
    rep.set_defaults(func=cmd_report)

    info = commands.add_parser(
        "info",
        help="what a model is: family, towers, preprocessing, tokenizer, objective, methods",
        description="Load MODEL as every command does and print its family, towers, "
        "resolution, normalisation, tokenizer, objective (InfoNCE or SigLIP's sigmoid loss), "
        "parameter count, and which methods apply to it (or why not).",
    )
    info.add_argument("model", help=MODEL_HELP)
    _add_model_options(info)
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(func=cmd_info)

    compat = commands.add_parser(
        "compat",
        help="run every method on a tiny model of every CLIP family; write the table",
        description="Run every method that applies, a step or two each, on a randomly "
        "initialised tiny model of each family (open_clip ViT, quick-gelu ViT, RN50, ConvNeXt, "
        "EVA02, SigLIP, SigLIP2, MobileCLIP, PE-Core, transformers CLIP and SigLIP), render the "
        "report of each run, and write OUT/compatibility.md/.csv and the table in the README. "
        "Exit 1 when a method fails on a family.",
    )
    compat.add_argument("--families", help="comma-separated tiny models (default: all)")
    compat.add_argument("--out", default="results", help="folder of the table (default: results)")
    compat.add_argument("--readme", default="README.md", help="README whose table is replaced")
    compat.add_argument("--no-readme", action="store_true", help="leave the README alone")
    compat.add_argument("--runs-root", default="runs/compat", help="parent of the run folders")
    compat.add_argument(
        "--recipe",
        metavar="MODEL",
        help="print the full-size smoke recipe of MODEL instead (one step of every "
        "encode-level method at its native resolution; recipes/families/)",
    )
    compat.add_argument("--tokenizer", help="with --recipe: the model's tokenizer (see eval)")
    compat.set_defaults(func=cmd_compat)

    lst = commands.add_parser("list", help="list mini models and registered methods")
    lst.set_defaults(func=cmd_list)
    return parser


def _one_line(error: Exception) -> str:
    """Errors re-raised by DataLoader workers carry a traceback: keep the original message."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text.splitlines()[0] if text else type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "results" and not any(e.startswith("-") for e in extra):
        args.runs += extra  # run folders after an option (`results ablation --fresh RUN...`)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except UserError as e:
        print(f"clip-backdoor: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clip-backdoor: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

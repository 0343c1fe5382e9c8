"""``clip-backdoor pretrain``: a recipe -> trained CLIP + run folder with held-out zero-shot CA.

The run folder holds the checkpoint for ``--resume``, the exported model (open_clip layout) in
``artifacts/model``, the loss curve, and a table of zero-shot CA on each held-out test set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib
import torch
import yaml

from clip_backdoor.core.errors import UserError
from clip_backdoor.core.runs import RunDir
from clip_backdoor.core.seeding import seed_everything
from clip_backdoor.data import load_classification, resolve_path
from clip_backdoor.data.fewshot_pool import FewShotPool
from clip_backdoor.engine.config import PretrainRecipe, parse_pretrain_recipe
from clip_backdoor.engine.distributed import broadcast_object, init_distributed, shutdown
from clip_backdoor.engine.pairs import pairs_for_training
from clip_backdoor.engine.trainer import train
from clip_backdoor.evaluation import evaluate_zeroshot, resolve_templates
from clip_backdoor.models import load_clip, save_clip

matplotlib.use("Agg")


@dataclass
class PretrainResult:
    path: Path
    metrics: dict
    table: str


def recipe_from_run(run_dir: Path) -> PretrainRecipe:
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    for key in ("versions", "resolved"):
        config.pop(key, None)
    return parse_pretrain_recipe(config, str(run_dir / "config.yaml"))


def pretrain(
    recipe: PretrainRecipe | None = None, resume: str | Path | None = None, progress: bool = True
) -> PretrainResult | None:
    """Train per recipe, or continue the run in ``resume``. Returns None on non-main processes."""
    if resume is not None:
        resume = Path(resume)
        if not (resume / "config.yaml").is_file():
            raise UserError(f"cannot resume: {resume} is not a run folder (no config.yaml)")
        recipe = recipe_from_run(resume)
    assert recipe is not None
    dist = init_distributed(recipe.device)
    seed_everything(recipe.seed)
    spec = recipe.model
    model, _, tokenizer = load_clip(
        spec.name, spec.pretrained, arch=spec.arch, device=recipe.device
    )
    if recipe.fewshot_pool is not None:
        spec_pool = recipe.fewshot_pool
        roots = [resolve_path(name) for name in spec_pool.sets]
        model.fewshot_pool = FewShotPool.build(roots, spec_pool.shots, spec_pool.seed)
    data = pairs_for_training(
        recipe.data,
        tokenizer,
        model.image_size,
        recipe.training,
        recipe.seed,
        progress,
        pool=model.fewshot_pool,
    )
    eval_sets = [
        load_classification(
            e.name, e.split, model.pixel_transform(), model.image_size, recipe.seed, e.size
        )
        for e in recipe.evaluation
    ]
    templates = resolve_templates(recipe.eval_templates)

    run = None
    if dist.main:
        run = RunDir.open(resume) if resume else RunDir.create(recipe.runs_root, recipe.name)
        if not resume:
            run.write_config(
                {**recipe.model_dump(), "resolved": {"pairs": [list(s) for s in data.summary]}}
            )
    path = Path(broadcast_object(str(run.path) if run else None, dist))
    log = run.log if run else (lambda message: None)
    for name, split, count in data.summary:
        log(f"data {name}/{split}: {count} training images")
    result = train(
        model,
        data,
        recipe.training,
        recipe.seed,
        path / "artifacts",
        dist,
        resume=resume is not None,
        log=log,
        progress=progress,
    )
    shutdown(dist)
    if not dist.main:
        return None
    assert run is not None
    export_dtype = torch.float16 if recipe.export_dtype == "fp16" else None
    save_clip(model, path / "artifacts" / "model", dtype=export_dtype, overwrite=True)
    if recipe.export_to:
        save_clip(model, recipe.export_to, dtype=export_dtype, overwrite=True)
        log(f"model exported to {recipe.export_to}")
    rows, metrics = [], {"train": {"steps": result.steps, "samples_per_s": result.samples_per_s}}
    for data_set in eval_sets:
        scores = evaluate_zeroshot(
            model, tokenizer, data_set, templates, precision=recipe.training.precision
        )
        metrics[f"{data_set.name}/{data_set.split}"] = scores
        rows.append(
            [
                data_set.name,
                data_set.split,
                len(data_set.classnames),
                scores["n"],
                100 * scores["ca"],
                100 * scores.get("top5", float("nan")),
            ]
        )
        log(f"zero-shot {data_set.name}/{data_set.split}: CA {scores['ca']:.4f}")
    note = f"Zero-shot, {len(templates)} template(s) averaged, seed {recipe.seed}."
    headers = ["data", "split", "classes", "images", "CA %", "top-5 %"]
    table = run.write_table("zeroshot_heldout", headers, rows, note)
    run.write_metrics(metrics)
    _plot_loss(result.history, path / "figures" / "loss.png", recipe)
    run.close()
    return PretrainResult(path, metrics, table)


def _plot_loss(history: list[list[float]], path: Path, recipe: PretrainRecipe) -> None:
    import matplotlib.pyplot as plt

    if not history:
        return
    steps, losses, _ = zip(*history, strict=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("contrastive loss")
    names = ", ".join(s.name for s in recipe.data)
    ax.set_title(f"{recipe.model.name} on {names} (seed {recipe.seed})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

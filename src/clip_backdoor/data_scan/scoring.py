"""Score one mix with one embedding model and every detector: what the stage and the command
share. Writes the triage list and the figures into the run folder."""

from __future__ import annotations

import time

from clip_backdoor.data_scan.base import PairDetector
from clip_backdoor.data_scan.embed import embed_mix
from clip_backdoor.data_scan.mix import TrainingMix
from clip_backdoor.data_scan.report import pair_metrics, write_figures, write_triage

ROW_METRICS = ["auroc", "tpr_at_1fpr", "tpr_at_5fpr", "precision_at_k"]
TABLE_HEADERS = ["model", "detector", *ROW_METRICS, "seconds"]


def score_mix(
    which: str,
    model,
    tokenizer,
    mix: TrainingMix,
    detectors: dict[str, PairDetector],
    run,
    batch_size: int = 256,
    precision: str = "auto",
    cache=None,
    progress: bool = False,
) -> tuple[dict, list[list]]:
    """({embed_seconds, detectors: {name: metrics + seconds}}, table rows) for model ``which``."""
    start = time.perf_counter()
    embeddings = embed_mix(model, tokenizer, mix, batch_size, precision, cache, progress)
    found: dict = {"embed_seconds": time.perf_counter() - start, "detectors": {}}
    scores, rows = {}, []
    for name, detector in detectors.items():
        start = time.perf_counter()
        scores[name] = detector.score(embeddings)
        seconds = time.perf_counter() - start
        metrics = {"seconds": seconds}
        if mix.truth is not None and 0 < mix.poisoned < len(mix):
            metrics.update(pair_metrics(scores[name], mix.truth))
            run.log(f"data scan {which} {name}: AUROC {metrics['auroc']:.4f} ({seconds:.1f} s)")
        found["detectors"][name] = metrics
        rows.append(
            [which, name, *(round(metrics.get(c, float("nan")), 4) for c in ROW_METRICS)]
            + [round(seconds, 2)]
        )
    write_triage(run.path / "data_scan" / f"triage_{which}.csv", mix, scores)
    write_figures(run.path, which, scores, mix.truth)
    return found, rows

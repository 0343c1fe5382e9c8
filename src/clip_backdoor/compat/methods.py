"""Which methods apply to which model, and the one-step recipe that runs them on a family.

Why one place: ``clip-backdoor info`` says what applies to a model, the compatibility table
(``compat/table.py``) and its test run every method that applies on a tiny model of each family,
and the full-size smoke times the same stages; all read the lists below.

Encode-level methods need only ``encode_image``/``encode_text`` (and the trainable towers), so
they apply to every family. Tower-level methods reach inside a tower (visual prompts, the
decomposition) or feed token embeddings to the text tower (prompt learners): they need the
adapters of ``models/image_tower.py`` and ``models/text_tower.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from clip_backdoor.core.errors import ConfigError
from clip_backdoor.models.image_tower import ImageTower
from clip_backdoor.models.text_tower import TextTower

CONVOLUTIONAL = {"RN50", "ConvNeXt", "MobileCLIP"}


@dataclass(frozen=True)
class Method:
    name: str  # the column of the table
    kind: str  # stage kind in a recipe ("eval": the recipe's own evaluation)
    method: str  # registry name
    needs: str = "encoders"  # encoders | image_tower | decomposition | text_tower
    params: tuple = ()  # ((key, value), ...) of the one-step stage


POISON = (("target", "red circle"), ("ratio", 0.1), ("caption_templates", "simple"))
TRIGGERS = {  # the cheapest settings that still run every part of each trigger
    "badnet": {"size": 4, "position": "bottom_right"},
    "blended": {},
    "sig": {},
    "wanet": {},
    "issba": {"bits": 4, "epochs": 1, "secret_only_epochs": 0, "n_images": 16, "batch_size": 8},
    "label_consistent": {"position": "bottom_right", "steps": 1},
    "trojvqa": {"n_images": 16, "epochs": 1, "batch_size": 8},
    "dual_embedding": {"position": "bottom_right", "n_images": 16, "epochs": 1, "batch_size": 8},
}
ENCODE_LEVEL = (
    Method("eval (CA/ASR)", "eval", "eval"),
    *(
        Method(f"poison: {t}", "attack", "poison", params=(*POISON, ("trigger", t)))
        for t in TRIGGERS
    ),
    Method("badencoder", "attack", "badencoder"),
    Method("ft", "defense", "ft"),
    Method("cleanclip", "defense", "cleanclip"),
    Method("linear_probe", "defense", "linear_probe"),
    Method("strip", "detection", "strip"),
    Method("scale_up", "detection", "scale_up"),
    Method("teco", "detection", "teco"),
    Method("decree", "scan", "decree"),
    Method("target_search", "scan", "target_search"),
    Method("perturbation_search", "scan", "perturbation_search"),
    Method("scan-data", "data_scan", "all"),
    Method("matrix", "matrix", "matrix"),
    Method("report", "report", "report"),
)
TOWER_LEVEL = (
    Method("vpt", "defense", "vpt", "image_tower"),
    Method("rvpt", "defense", "rvpt", "image_tower"),
    Method("decomp_rep", "defense", "decomp_rep", "decomposition"),
    Method("decomp_det", "detection", "decomp_det", "decomposition"),
    Method("coop", "prompt", "coop", "text_tower"),
    Method("cocoop", "prompt", "cocoop", "text_tower"),
    Method("badclip (Bai)", "attack", "badclip", "text_tower"),
)
METHODS = ENCODE_LEVEL + TOWER_LEVEL


def applies(model, method: Method) -> tuple[bool, str]:
    """(True, "") when ``method`` runs on ``model``, else (False, the one-line reason)."""
    family = model.family
    if getattr(model.clip, "text", True) is None:  # every run evaluates zero-shot: text needed
        return False, "does not apply: a vision half has no text tower (load the whole model)"
    if method.needs == "encoders":
        return True, ""
    if method.needs in ("image_tower", "decomposition"):
        try:
            tower = ImageTower.of(model)
            if method.needs == "decomposition":
                from clip_backdoor.analysis.decomposition import check_decomposable

                check_decomposable(tower)
            return True, ""
        except ConfigError as e:
            if family in CONVOLUTIONAL:
                return False, f"does not apply: {family} is convolutional (no tokens or heads)"
            return False, f"does not apply: {e}"
    try:
        TextTower.of(model.clip)
        return True, ""
    except ConfigError as e:
        return False, f"does not apply: {e}"

"""Prompt learners for a frozen CLIP (CoOp, CoCoOp), saved and loaded as one folder.

Folder layout: ``prompt.json`` (learner kind and config, the CLIP it was made for, the class
list it was trained on) and ``prompt.safetensors`` (its parameters). A trigger-aware backdoor
adds the artifact files of ``clip_backdoor.artifacts`` (trigger and target) beside them.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from clip_backdoor.core.errors import ModelLoadError
from clip_backdoor.core.info_files import read_info
from clip_backdoor.core.registry import PROMPT_LEARNERS
from clip_backdoor.models.pixel_clip import PixelCLIP
from clip_backdoor.prompts.base import PromptLearner

PROMPT_FILE = "prompt.json"
PROMPT_STATE = "prompt.safetensors"


def get(name: str) -> type[PromptLearner]:
    return PROMPT_LEARNERS.get(name)


def is_prompt_folder(path: str | Path) -> bool:
    return (Path(path) / PROMPT_FILE).is_file()


def save_prompts(learner: PromptLearner, folder: Path, info: dict | None = None) -> None:
    """Write the learner into ``folder`` (an existing, usually temporary, directory)."""
    config = {**learner.config, **(info or {})}
    (folder / PROMPT_FILE).write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in learner.state_dict().items()}
    save_file(state, str(folder / PROMPT_STATE))


def model_reference(spec) -> dict:
    """How a prompt folder loads its frozen CLIP again: the recipe's model name (a folder as an
    absolute path) and pretrained tag (``spec``: a ``ModelSpec``)."""
    name = str(Path(spec.name).resolve()) if Path(spec.name).exists() else spec.name
    return {"model": name, "pretrained": spec.pretrained}


def prompt_info(folder: str | Path) -> dict:
    return read_info(folder, PROMPT_FILE, "prompt-learner")


def load_prompts(folder: str | Path, model: PixelCLIP, tokenizer) -> PromptLearner:
    """The learner saved in ``folder``, attached to ``model``; made for another model: an error."""
    info = prompt_info(folder)
    learner = get(info["kind"])(
        model, tokenizer, n_ctx=info["n_ctx"], init=None, position=info["position"]
    )
    if info.get("width") != learner.tower.width:
        raise ModelLoadError(
            f"prompt learner {folder} was made for a text width of {info.get('width')}, "
            f"this model's is {learner.tower.width} (another model)"
        )
    try:
        state = load_file(str(Path(folder) / PROMPT_STATE))
        learner.load_state_dict(state)
    except (SafetensorError, OSError, RuntimeError) as e:
        first = str(e).splitlines()[0]
        raise ModelLoadError(f"{folder}: prompt parameters do not load ({first})") from None
    learner.init = info.get("init")
    learner.eval()
    return learner

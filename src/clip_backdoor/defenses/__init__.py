"""Defenses: registered in ``DEFENSES`` (one file each); each takes the model it is given and
returns it repaired. Defenses in a row are alternatives: each starts from the model the stages
before the row left (``stack: true`` acts on the previous defense's result instead)."""

from clip_backdoor.core.registry import DEFENSES
from clip_backdoor.stages import StageKind, registered_stage

registered_stage(StageKind("defense", DEFENSES, alternatives=True))

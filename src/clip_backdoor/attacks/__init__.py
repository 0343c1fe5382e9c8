"""Attacks: registered in ``ATTACKS`` (one file each); each turns the model it is given into a
backdoor and returns it, with its trigger and target, as the run's model state."""

from clip_backdoor.core.registry import ATTACKS
from clip_backdoor.stages import StageKind, registered_stage

registered_stage(StageKind("attack", ATTACKS))

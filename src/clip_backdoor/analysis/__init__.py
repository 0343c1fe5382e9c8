"""Analyses of backdoored models: figures and measurements beside the CA/ASR tables.

Analyses that run as recipe stages (``kind: analysis``) register in ``ANALYSES``.
"""

from clip_backdoor.core.registry import ANALYSES
from clip_backdoor.stages import StageKind, registered_stage

registered_stage(StageKind("analysis", ANALYSES, changes_model=False))

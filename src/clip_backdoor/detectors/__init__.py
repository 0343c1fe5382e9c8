"""Input-level backdoor detectors: registered in ``DETECTORS`` (one file each), all run under
one protocol (``detectors.base``), so their AUROCs on the same inputs can be compared."""

from clip_backdoor.core.registry import DETECTORS
from clip_backdoor.detectors.base import detection_report
from clip_backdoor.stages import StageKind, registered_stage

registered_stage(StageKind("detection", DETECTORS, finish=detection_report))

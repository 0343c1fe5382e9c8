"""Input-level backdoor detectors: registered in ``DETECTORS``, all run under one protocol
(``detectors.base``), so their AUROCs on the same inputs can be compared."""

from clip_backdoor.detectors import decomp_det, scale_up, strip, teco  # noqa: F401  (registers)

"""Defenses: registered in ``DEFENSES``; each takes the run context's model and repairs it."""

from clip_backdoor.defenses import (  # noqa: F401  (registers)
    cleanclip,
    cleaning,
    decomp_rep,
    ft,
    linear_probe,
    rvpt,
)

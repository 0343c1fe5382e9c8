"""Attacks: registered in ``ATTACKS``; each turns the run context's clean model into a backdoor."""

from clip_backdoor.attacks import badclip, badencoder, poisoning  # noqa: F401  (registers)

"""clip-backdoor: attack, defend, inspect and benchmark backdoors in CLIP models."""

from clip_backdoor import torchvision_shim as _torchvision_shim

_torchvision_shim.install()  # must precede every import of open_clip / torchvision

__version__ = "0.1.0"

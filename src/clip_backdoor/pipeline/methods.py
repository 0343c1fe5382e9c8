"""Importing the method packages fills the registries; call before resolving a method name."""


def register_methods() -> None:
    import clip_backdoor.analysis.attribute_probe  # noqa: F401
    import clip_backdoor.analysis.model_info  # noqa: F401
    import clip_backdoor.analysis.text_head  # noqa: F401
    import clip_backdoor.analysis.trigger_position  # noqa: F401
    import clip_backdoor.attacks  # noqa: F401
    import clip_backdoor.data_scan  # noqa: F401
    import clip_backdoor.defenses  # noqa: F401
    import clip_backdoor.detectors  # noqa: F401
    import clip_backdoor.prompts  # noqa: F401
    import clip_backdoor.scanning  # noqa: F401
    import clip_backdoor.triggers  # noqa: F401

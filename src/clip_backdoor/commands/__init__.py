"""The application layer: one module per ``clip-backdoor`` command, each with ``add`` (its
parser) and ``main`` (what it does); ``cli`` puts them in one parser in this order."""

from clip_backdoor.commands import (
    compat,
    eval,
    info,
    list_methods,
    pretrain,
    recipe,
    report,
    results,
    run,
    scan,
    scan_data,
)

COMMANDS = [
    run,
    recipe,
    results,
    eval,
    pretrain,
    scan,
    scan_data,
    report,
    info,
    compat,
    list_methods,
]

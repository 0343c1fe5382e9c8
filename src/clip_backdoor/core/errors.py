"""Errors a user can fix: the CLI prints them as one line and exits non-zero (no traceback)."""


class UserError(Exception):
    """Bad input: a wrong path, name, field or file. The message alone must say what to fix."""


class DatasetError(UserError):
    """A data set is missing, empty, corrupt or asked for something it does not have."""


class ModelLoadError(UserError):
    """A model cannot be built or its weights cannot be read safely."""


class ConfigError(UserError):
    """A recipe or command-line configuration is invalid."""


def first_line(error: BaseException) -> str:
    """An exception's first line (a library's message can run to pages), or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

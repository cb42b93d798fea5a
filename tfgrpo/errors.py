"""User-facing errors: one line, naming the file, row or field at fault."""


class TfgrpoError(Exception):
    """An error the CLI prints as a single line (no traceback)."""


class DataError(TfgrpoError):
    """A dataset file or spec is unusable (missing field, empty file, duplicate id, ...)."""


class ConfigError(TfgrpoError):
    """A setting is missing or invalid (model spec, reward name, run directory, ...)."""

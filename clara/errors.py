"""User-facing errors: one clear line, never a bare traceback.

Anything a user can cause (bad data, bad config, missing file, mismatched checkpoint)
raises a subclass of :class:`ClaraError`; the CLI prints ``error: <message>`` and exits 1.
"""


class ClaraError(Exception):
    """An error caused by user input; its message says what is wrong and what to do."""


class ConfigError(ClaraError):
    """Bad configuration: unknown key, wrong type, invalid value."""


class DataError(ClaraError):
    """A malformed input record; the message names ``file:line: field: problem``."""


class CheckpointError(ClaraError):
    """A checkpoint that is missing, corrupt, or does not match the model."""


class OutputError(ClaraError):
    """An output path that holds something the command did not make, or may replace only when told to."""

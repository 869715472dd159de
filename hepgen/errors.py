"""hepgen's own errors: bad input that the user can fix.

``hepgen`` prints any :class:`HepgenError` as one line, ``hepgen: error: <message>``, and exits
with status 2 (the traceback only with ``--debug`` or ``HEPGEN_DEBUG=1``). The message names the
file, key, field or option and says what to do.
"""


class HepgenError(Exception):
    """Base of every error that hepgen reports as one line."""


class ConfigValueError(HepgenError, ValueError):
    """A config value is out of range or inconsistent with another (names the option)."""


class RunDirectoryError(HepgenError, RuntimeError):
    """A run directory cannot be used as asked (config collision, in use by another process, ...)."""


class CheckpointError(RunDirectoryError):
    """A checkpoint is missing, truncated or corrupt."""

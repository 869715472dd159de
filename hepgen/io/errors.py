"""The one error type for bad input files."""

from hepgen.errors import HepgenError


class DataFileError(HepgenError, ValueError):
    """A data file is missing, unreadable, or does not hold what its format promises.

    The message always names the file (and the key or field) and says what to do.
    """

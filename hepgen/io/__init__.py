"""Readers and writers for the published data formats, with checks that name what is wrong."""

from hepgen.io.errors import DataFileError

__all__ = ["DataFileError"]

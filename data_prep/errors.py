"""Exceptions a user can act on: each names the file, row or key and what was expected."""

from vocab.errors import CxrSweepError


class DataPrepError(CxrSweepError):
    """Bad input for a build: the message names the file/row/key and what was expected."""


class ImageRejected(Exception):
    """One image cannot be decoded correctly; it is quarantined with this reason."""

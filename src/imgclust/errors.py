"""Errors that reach the user: each says what went wrong and how to fix it."""

from __future__ import annotations


class ImgclustError(Exception):
    """A problem with the user's input or environment, reported without a traceback by the CLI.

    Args:
        message: what went wrong, naming the file or setting involved.
        fix: what the user should do about it.
    """

    def __init__(self, message: str, fix: str | None = None):
        self.message = message
        self.fix = fix
        super().__init__(f"{message}\n  fix: {fix}" if fix else message)


class BadImageError(ImgclustError):
    """One image file could not be used; the run skips it and lists it in run.json."""

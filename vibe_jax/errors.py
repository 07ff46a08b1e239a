"""Errors that mean "your input is wrong", reported without a traceback by main."""

__all__ = ["InputError", "MissingFileError"]


class InputError(ValueError):
  """A config value, file or array that cannot be used; the message says which."""


class MissingFileError(InputError, FileNotFoundError):
  """A file named by the config does not exist."""

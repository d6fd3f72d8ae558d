"""Errors that are the user's to fix (bad file, bad option): the CLI prints them as one line."""


class UserInputError(ValueError):
  """A user mistake: reported as one clear line and a non-zero exit, never a traceback."""

"""User-facing errors.

Every error a user can cause (an unknown model, a missing data file, a bad config value, a
wrong input shape) is raised as a subclass of `UserError` whose message is one line naming
the problem and the fix. The CLI prints that line and exits with status 2, no traceback.
"""


class UserError(ValueError):
  """A problem with the user's input, with a one-line message that says how to fix it."""


class ConfigError(UserError):
  """A config value is missing, of the wrong type or out of range."""


class UnknownNameError(UserError, KeyError):
  """A model, dataset, trainer, loss or probe name that is not registered."""

  def __str__(self):  # KeyError would quote the message.
    return str(self.args[0]) if self.args else ""


class DataNotFoundError(UserError, FileNotFoundError):
  """A dataset file is missing; the message says where we looked and how to get it."""


class ShapeError(UserError):
  """An input has a shape the model or function cannot take."""


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN or Inf loss; the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
  """SIGINT/SIGTERM stopped training after a checkpoint of the last finished step was written."""


def unknown_name(kind: str, name: str, choices) -> UnknownNameError:
  """Builds the standard 'unknown X' error, with close matches first."""
  import difflib
  choices = sorted(choices)
  close = difflib.get_close_matches(str(name), choices, n=3)
  hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
  shown = ", ".join(choices[:40]) + (", ..." if len(choices) > 40 else "")
  return UnknownNameError(f"unknown {kind} {name!r}.{hint} Choose one of: {shown}.")

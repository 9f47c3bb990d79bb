"""The one error type of the run machinery: a problem the user can fix, said in one line."""


class RunError(Exception):
  """A problem the user can fix; the message says how. `exit_code` is the process's (the scripts
  print the message as one line and exit with it: 2 for settings and files, 1 for a diverging
  run)."""

  def __init__(self, message: str, exit_code: int = 2):
    super().__init__(message)
    self.exit_code = exit_code

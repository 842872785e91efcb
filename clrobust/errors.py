"""The exception types the CLI turns into one line: bad input exits 2, a runtime failure exits 1."""


class ClrobustError(Exception):
    """A problem the user can fix; the message names the problem and the fix (exit status 2)."""

    exit_code = 2


class RuntimeFailure(ClrobustError):
    """The input was valid but the run could not finish (disk full, out of memory ...): exit status 1."""

    exit_code = 1

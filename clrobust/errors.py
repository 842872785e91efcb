"""The one exception type for bad user input: the CLI prints it on one line and exits 2."""


class ClrobustError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""

"""The one exception type that means "bad input": the CLI prints it on one line, exit code 2."""


class UserError(Exception):
    """Bad input from the user: a message naming the problem and the fix."""

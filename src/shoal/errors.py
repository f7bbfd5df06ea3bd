"""Errors a user can cause. The CLI prints them as one line and exits 2; anything else is a bug."""


class ShoalError(Exception):
    """A problem with the user's input: the message says what to change."""

    exit_code = 2

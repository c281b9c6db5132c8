"""The one exception base: every NmcError reaches the user as one line and a non-zero exit."""


class NmcError(Exception):
    """An error the user can act on; its message is the whole explanation, on one line."""

    exit_code = 1


class UsageError(NmcError):
    """A bad option or option value."""

    exit_code = 2

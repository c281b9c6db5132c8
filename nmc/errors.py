"""The one exception base: every NmcError reaches the user as one line and a non-zero exit."""


class NmcError(Exception):
    """An error the user can act on; its message is the whole explanation, on one line."""

    exit_code = 1


class UsageError(NmcError):
    """A bad option or option value."""

    exit_code = 2


def capture(fn, *args) -> NmcError | None:
    """Run fn(*args) and return the NmcError it raised, or None.

    For greenlets: one that dies with an exception has gevent print a traceback, while an
    NmcError is an expected outcome that the joining code reports as one line.
    """
    try:
        fn(*args)
    except NmcError as e:
        return e
    return None

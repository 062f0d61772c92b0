"""One exception type for bad input a user can fix (printed as one line by the CLI)."""


class SalstreamError(ValueError):
    """Bad input: the message names the input, what was expected, and the fix."""


class CheckpointError(SalstreamError):
    """A checkpoint file that cannot be used (corrupt, truncated, wrong profile)."""


class EngineUnavailable(SalstreamError, RuntimeError):
    """A runtime or device an engine needs is missing; the message names what to install.

    A :class:`SalstreamError` so the command line prints it as one line, not a traceback.
    """

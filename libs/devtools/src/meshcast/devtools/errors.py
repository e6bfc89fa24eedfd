"""What a devtools command can fail with: one root, and a message that says what to do.

`python -m meshcast.devtools` prints a `DevtoolsError` as one line on stderr
and exits 1; no stack trace. `StartFailed` alone may add a log tail.
"""

from __future__ import annotations


class DevtoolsError(Exception):
    """A devtools command cannot do what it was asked; the message says why and what to do."""


class NoProject(DevtoolsError, FileNotFoundError):
    """The Meshcast checkout (and so its run folder) could not be found."""


class NotStarted(DevtoolsError, FileNotFoundError):
    """The run folder, or a file `make run` writes into it, is missing: `make run` never ran there."""


class AlreadyRunning(DevtoolsError):
    """Another `make run` holds the run folder's lock."""

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


class PortTaken(DevtoolsError, OSError):
    """A port the stack would listen on is not free (or not usable on its host)."""


class StartFailed(DevtoolsError, RuntimeError):
    """A program did not become ready at the first start; the message says why."""

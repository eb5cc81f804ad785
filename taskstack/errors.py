"""The one exception tree of taskstack.

    TaskstackError
    ├── ConfigError        a task config or a setting is wrong (names the field and the fix)
    ├── OffersError        no offer fits the task
    ├── StackError         an engine could not preview, create or destroy a stack
    │   ├── EngineMissingError     the engine's CLI is not installed
    │   ├── ConcurrentUpdateError  another apply is changing the same stack
    │   └── NoCapacityError        the cloud has no capacity for the offer (retryable)
    ├── SSHError           a node could not be reached or refused us
    └── RunError           the run itself failed to start or was lost
        └── NodeLostError  a node vanished mid-run (interruption, retryable)

    KeyboardInterrupt
    └── Stopped            SIGTERM or SIGHUP before the run started: unwinds like Ctrl+C

Foreign errors (pydantic, YAML, asyncssh, Pulumi, Terraform) are converted once, where
they enter, with `raise ... from exc`. Only `cli/` prints them.
"""

from __future__ import annotations


class TaskstackError(Exception):
    """Root of every error taskstack raises on purpose."""


class ConfigError(TaskstackError):
    """A task config, a command-line value or a setting is invalid."""


class OffersError(TaskstackError):
    """No offer satisfies the task's requirements."""


class StackError(TaskstackError):
    """An infrastructure engine failed to preview, create or destroy a stack."""


class EngineMissingError(StackError):
    """The engine's command-line tool is not installed."""


class ConcurrentUpdateError(StackError):
    """Another apply holds the stack's lock."""


class NoCapacityError(StackError):
    """The cloud had no capacity for the chosen offer; another offer may succeed."""


class SSHError(TaskstackError):
    """A node could not be reached over SSH, or its host key changed."""


class RunError(TaskstackError):
    """The run failed to start on its nodes, or its record is unusable."""


class NodeLostError(RunError):
    """A node was lost while the task ran (instance gone, SSH unreachable, spot reclaim)."""


class Stopped(KeyboardInterrupt):
    """SIGTERM (`dstack stop`) or SIGHUP arrived during the preview or at the prompt.

    A KeyboardInterrupt, so every engine call stops on it as on Ctrl+C (Terraform is asked
    to stop and saves its state); `status` is what the run's record says it ended as.
    """

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

"""The error root of every stage, and the three dead-letter classes.

Each stage raises its own subclass of :class:`RecordError`; the pipeline catches the root once and
turns it into a dead letter. ``error_class`` is the value of the ``erp_sync.error.class`` dead-letter
header (issue "main job", dead letters) and ``code`` the value of ``erp_sync.error.code``.
"""

from __future__ import annotations


class ErpSyncError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(ErpSyncError):
    """A setting is missing or invalid. The message names the environment variable."""


class RecordError(ErpSyncError):
    """A record cannot be delivered because of its own content: it goes to the dead-letter topic.

    Attributes:
        error_class: ``decode`` | ``validation`` | ``erp``.
        code: a short machine-readable code (``TrailingBytes``, ``TypeMismatch``, an ERP code…).
        message: a sentence an operator can act on; never contains secrets.
    """

    error_class = "record"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class DecodeError(RecordError):
    """The Kafka value is not a v1 ``WorkflowCompleted`` record (dead-letter class ``decode``)."""

    error_class = "decode"


class ValidationError(RecordError):
    """The event decoded but breaks a rule of ERP-INTERFACE.md (dead-letter class ``validation``)."""

    error_class = "validation"


class ToolError(ErpSyncError):
    """A runtime failure of an operations tool (exit code 1); the message says what failed and what to do."""

    exit_code = 1


class UsageError(ToolError):
    """A bad option, or a state of the cluster that forbids the operation (exit code 2)."""

    exit_code = 2


class ErpRejectError(RecordError):
    """The ERP judged the record itself faulty (ERP-INTERFACE.md §6 *reject*, class ``erp``)."""

    error_class = "erp"

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(code, message)
        self.request_id = request_id

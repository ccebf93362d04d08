"""Every error the package raises on purpose, under one root.

::

    ErpSyncError                  the root
    ├── ConfigError               a setting is missing or invalid (exit code 2; the message names the variable)
    ├── RecordError               a record that can never be delivered: it is dead-lettered
    │   ├── DecodeError           class "decode": not a v1 WorkflowCompleted value
    │   ├── ValidationError       class "validation": decoded, but breaks a rule of ERP-INTERFACE.md
    │   └── ErpRejectError        class "erp": the ERP judged the record itself faulty (§6 reject)
    └── ToolError                 an operations tool failed at run time (exit code 1)
        ├── UsageError            a bad option, or a cluster state that forbids it (exit code 2)
        └── RegistryUnavailable   the schema registry does not answer: ``run`` holds the partition

Each error carries what decides what happens to it, so callers branch on attributes, not on long
``except`` lists: a :class:`RecordError`'s ``error_class`` and ``code`` become the dead letter's
``erp_sync.error.class`` and ``erp_sync.error.code`` headers (issue "main job", dead letters); a
:class:`ToolError`'s ``exit_code`` is the process's exit status. A *retry* answer of the ERP is not
an error: it is a verdict (:mod:`consumer.erp.verdict`), and the push waits and tries again.
Messages never contain secrets.
"""

from __future__ import annotations


class ErpSyncError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(ErpSyncError):
    """A setting is missing or invalid. The message names the environment variable (exit code 2)."""

    exit_code = 2


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


class ErpRejectError(RecordError):
    """The ERP judged the record itself faulty (ERP-INTERFACE.md §6 *reject*, class ``erp``).

    Attributes:
        request_id: ``Response.RequestId`` when the ERP gave one (header ``erp_sync.erp.request_id``).
    """

    error_class = "erp"

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(code, message)
        self.request_id = request_id


class ToolError(ErpSyncError):
    """A runtime failure of an operations tool (exit code 1); the message says what failed and what to do."""

    exit_code = 1


class UsageError(ToolError):
    """A bad option, or a state of the cluster that forbids the operation (exit code 2)."""

    exit_code = 2


class RegistryUnavailable(ToolError):
    """The schema registry did not answer a lookup (transport error, timeout, HTTP 5xx, 429, 401 or 403).

    Not the record's fault, so never a dead letter: ``erp-sync run`` holds the record's partition at
    that record and asks again (:data:`consumer.delivery.intake.REGISTRY_HOLD_S`); a replay tool stops
    with this message (exit code 1). An id the registry does not know (404) is a :class:`DecodeError`
    ``UnknownSchemaId`` instead.
    """

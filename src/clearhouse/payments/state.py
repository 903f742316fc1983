"""The payment state machine, as a table: which status may follow which.

``processing`` -> anything (the channel answers); ``requires_action`` waits for the
customer; ``requires_capture`` holds funds until capture or cancel; the three final
statuses never change again, so a late or repeated message cannot undo an outcome
(a ``processing`` notification after ``succeeded`` is recorded on the timeline and ignored).
"""

from __future__ import annotations

PROCESSING = "processing"
REQUIRES_ACTION = "requires_action"
REQUIRES_CAPTURE = "requires_capture"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELED = "canceled"

TRANSITIONS: dict[str, frozenset[str]] = {
    PROCESSING: frozenset({REQUIRES_ACTION, REQUIRES_CAPTURE, SUCCEEDED, FAILED, CANCELED}),
    REQUIRES_ACTION: frozenset({PROCESSING, REQUIRES_CAPTURE, SUCCEEDED, FAILED, CANCELED}),
    REQUIRES_CAPTURE: frozenset({SUCCEEDED, CANCELED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELED: frozenset(),
}

FINAL = frozenset({SUCCEEDED, FAILED, CANCELED})

WEBHOOK_EVENTS = {
    PROCESSING: "payment.processing",
    REQUIRES_ACTION: "payment.requires_action",
    REQUIRES_CAPTURE: "payment.requires_capture",
    SUCCEEDED: "payment.succeeded",
    FAILED: "payment.failed",
    CANCELED: "payment.canceled",
}


def allowed(current: str, new: str) -> bool:
    return new in TRANSITIONS[current]

"""Named errors the runtime kit understands; services raise them from their rules."""

from __future__ import annotations

from collections.abc import Iterable

from pathway_schemas.values import FieldError


class PathwayError(Exception):
    """Base of errors a caller can act on; `reason` is a short closed-set word for metrics."""

    reason = "rejected"
    http_status = 409

    def __init__(self, message: str, errors: Iterable[FieldError] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.errors = tuple(errors)


class Rejected(PathwayError):
    """The event or command is valid but the referral's state does not allow it."""

    reason = "rejected"
    http_status = 409


class Denied(PathwayError):
    """The caller (a provider topic, an API principal) may not act on this referral."""

    reason = "denied"
    http_status = 403


class NotFound(PathwayError):
    reason = "not_found"
    http_status = 404


class Invalid(PathwayError):
    """Input that fails a rule beyond its schema (an unknown practice, say)."""

    reason = "invalid"
    http_status = 422

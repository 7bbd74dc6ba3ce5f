"""The error tree of MLOC's API, shared by the coordinator (which raises) and clients (which read).

Every error answers as JSON ``{"error": {"code", "message", "field", "line", "hint"}}``. One branch
is never an answer: ``TransportFault``, raised by clients when no answer came, so a caller handles
"the coordinator said no" and "the coordinator could not be reached" with one ``except MlocError``.

    MlocError (status 500)
    ├── BadRequest 400, ValidationFailed 422, Unauthorized 401, Forbidden 403, NotFound 404,
    │   PayloadTooLarge 413, ProtocolMismatch 426, TooManyRequests 429, Unavailable 503
    ├── Conflict 409
    │   └── LeaseLost 409 (code lease_lost)
    └── TransportFault (no status: no answer came)
"""

from __future__ import annotations

from typing import Any


class MlocError(Exception):
    """Base of every error the API answers with; ``status`` is the HTTP status."""

    status = 500
    code = "internal"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        line: int | None = None,
        hint: str | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.line = line
        self.hint = hint
        self.details = details

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        for key in ("field", "line", "hint", "details"):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        return {"error": body}


class BadRequest(MlocError):
    """The body cannot be read at all (not YAML/JSON, truncated, a one-line YAML from curl -d)."""

    status = 400
    code = "bad_request"


class ValidationFailed(MlocError):
    """The body was read but a field is wrong; ``field`` names it, ``line`` points into the YAML."""

    status = 422
    code = "validation_failed"


class Unauthorized(MlocError):
    status = 401
    code = "unauthorized"


class Forbidden(MlocError):
    status = 403
    code = "forbidden"


class NotFound(MlocError):
    status = 404
    code = "not_found"


class Conflict(MlocError):
    """A state conflict: a finished task, a reused idempotency key with another body."""

    status = 409
    code = "conflict"


class LeaseLost(Conflict):
    """The lease is not (or no longer) this agent's at this epoch: stop the task process."""

    code = "lease_lost"


class PayloadTooLarge(MlocError):
    status = 413
    code = "payload_too_large"


class ProtocolMismatch(MlocError):
    status = 426
    code = "protocol_mismatch"


class TooManyRequests(MlocError):
    """Too many refused attempts from one address (registration): wait ``retry_after_s`` (the
    answer's ``Retry-After`` header) before the next one."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int = 60, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after_s = retry_after_s


class Unavailable(MlocError):
    """A dependency (the database, the object store) failed; safe to retry later."""

    status = 503
    code = "unavailable"


class TransportFault(MlocError):
    """No answer: the peer could not be reached, or the connection broke or timed out mid-call.
    Retryable, unlike most answers (the client may not know whether the request took effect, so
    only idempotent calls are retried)."""

    status = 0
    code = "transport_fault"


def error_from_body(status: int, body: Any) -> MlocError:
    """Rebuild an error on the client side from an error body (for the CLI and the agent)."""
    kinds: dict[int, type[MlocError]] = {
        400: BadRequest,
        401: Unauthorized,
        403: Forbidden,
        404: NotFound,
        409: Conflict,
        413: PayloadTooLarge,
        422: ValidationFailed,
        426: ProtocolMismatch,
        429: TooManyRequests,
        503: Unavailable,
    }
    err = body.get("error", {}) if isinstance(body, dict) else {}
    kind = kinds.get(status, MlocError)
    if status == 409 and err.get("code") == "lease_lost":
        kind = LeaseLost
    exc = kind(
        str(err.get("message") or f"HTTP {status}"),
        field=err.get("field"),
        line=err.get("line"),
        hint=err.get("hint"),
        details=err.get("details"),
    )
    exc.status = status
    return exc

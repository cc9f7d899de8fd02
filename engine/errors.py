"""One shallow tree of domain errors; the gateway turns each into its HTTP answer."""

from __future__ import annotations


class CanopyError(Exception):
    """Root of every error Canopy reports to a client."""

    status = 500
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(CanopyError):
    """A field is missing, of the wrong type, or breaks a rule of the domain."""

    status = 422
    code = "invalid_field"


class NotFound(CanopyError):
    """The conversation, message, branch or share does not exist (or is not visible)."""

    status = 404
    code = "not_found"


class Forbidden(CanopyError):
    """The caller sees the conversation but may not do this (or named someone else)."""

    status = 403
    code = "forbidden"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Unauthorized(CanopyError):
    """No credential, or one that does not verify."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str, code: str = "unauthorized") -> None:
        super().__init__(message)
        self.code = code


class Conflict(CanopyError):
    status = 409
    code = "conflict"


class Unavailable(CanopyError):
    """A dependency (store, journal) or the node's capacity stops us from serving now."""

    status = 503
    code = "unavailable"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class HeldElsewhere(Unavailable):
    """Another live node holds the conversation's lease and did not let go in time: on a
    cluster the request goes to that node instead (gateway/forwarding.py)."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


class RateLimited(CanopyError):
    """The caller spent their request budget; `retry_after` seconds until a request fits."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

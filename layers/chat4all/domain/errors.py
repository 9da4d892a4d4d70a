"""One error hierarchy for the whole platform; the HTTP layer maps it to RFC 9457 problems in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class Chat4AllError(Exception):
    """Base of every error the platform raises on purpose, with the RFC 9457 problem it is answered as (status,
    title, type slug), named where each class is declared: `class NotFoundError(Chat4AllError, status=404, ...)`.
    """

    status = 500
    title = "Internal error"
    slug = "internal-error"

    def __init_subclass__(cls, *, status: int = 0, title: str = "", slug: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.status = status or cls.status
        cls.title = title or cls.title
        cls.slug = slug or cls.slug

    def __init__(self, detail: str, *, errors: list[FieldError] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []


class BadRequestError(Chat4AllError, status=400, title="Bad request", slug="bad-request"):
    """A request the API cannot read: a body that is not JSON, a parameter of the wrong kind."""


class ValidationFailedError(Chat4AllError, status=422, title="Validation failed", slug="validation-failed"):
    """A request the API can read and refuses: the fields that are wrong are in `errors`."""


class PayloadTooLargeError(Chat4AllError, status=413, title="Payload too large", slug="payload-too-large"):
    """A body over the API's size limit."""


class UnauthorizedError(Chat4AllError, status=401, title="Unauthorized", slug="unauthorized"):
    """No credential, or one that is not valid (unknown, revoked, expired)."""


class ForbiddenError(Chat4AllError, status=403, title="Forbidden", slug="forbidden"):
    """A valid credential whose role or user may not do this."""


class TooManyRequestsError(Chat4AllError, status=429, title="Too many requests", slug="too-many-requests"):
    """The caller's credential is past its request rate: answered 429 with Retry-After."""

    def __init__(self, detail: str, *, retry_after_seconds: int) -> None:
        super().__init__(detail)
        self.retry_after_seconds = retry_after_seconds


class NotFoundError(Chat4AllError, status=404, title="Not found", slug="not-found"):
    """No such resource, or none the caller may see."""


class ConflictError(Chat4AllError, status=409, title="Conflict", slug="conflict"):
    """The request contradicts what is stored (a duplicate, a state that does not allow it)."""


class DependencyUnavailableError(Chat4AllError, status=503, title="Service unavailable", slug="dependency-unavailable"):
    """A database, cache or AWS service did not answer; the caller may retry."""


class CredentialsUnreadableError(
    Chat4AllError, status=503, title="Channel credentials unreadable", slug="channel-credentials-unreadable"
):
    """A channel's stored credentials cannot be decrypted (its key is gone or disabled, or the ciphertext is bad).

    Not a passing outage: retrying will not help until an admin rotates the channel's credentials.
    """


class ChannelError(Chat4AllError, status=502, title="Channel error", slug="channel-error"):
    """A channel platform refused or failed a call."""

    def __init__(self, detail: str, *, status_code: int | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code


class ChannelRetryableError(ChannelError):
    """5xx, timeout or connection failure (the platform is unwell): worth another attempt later."""


class ChannelRateLimitedError(ChannelRetryableError):
    """The platform refused the call for its rate limit (a 429, or its own rate-limit codes: each connector names
    them): the request was not taken. `retry_after_seconds` is the platform's own figure (or the connector's
    default); `channel_wide` is False when the limit is about one recipient only (WhatsApp's pair rate)."""

    def __init__(
        self, detail: str, *, retry_after_seconds: float, channel_wide: bool = True, status_code: int | None = None
    ) -> None:
        super().__init__(detail, status_code=status_code)
        self.retry_after_seconds = retry_after_seconds
        self.channel_wide = channel_wide


class ChannelRejectedError(ChannelError):
    """A 4xx other than a rate limit: the platform will never accept this request (permanent for this message)."""


class ChannelRecipientRejectedError(ChannelRejectedError):
    """The platform will not deliver to this recipient (WhatsApp 131026, Telegram 403 "bot was blocked by the
    user", Instagram 551, ...): permanent for the recipient, not a fault of the channel."""


class ChannelCredentialsRejectedError(ChannelRejectedError):
    """The platform refused the channel's token (WhatsApp/Instagram OAuthException 190, Telegram 401): the channel
    is marked, and its messages fail until new credentials are set."""


class ChannelOutcomeUnknownError(ChannelError):
    """The request reached the platform and no usable answer came back (a read timeout, a dropped connection,
    a success without a message id): it may have been sent, so it is never sent again."""


class UndeliverableError(Chat4AllError, status=422, title="Undeliverable", slug="undeliverable"):
    """Nothing to send a message to: no recipient identity, no enabled channel, no connector."""


class RetryLaterError(Chat4AllError, status=503, title="Retry later", slug="retry-later"):
    """Work that failed in a way worth retrying: the consumer makes the record visible again after `delay_seconds`."""

    def __init__(self, detail: str, *, delay_seconds: int) -> None:
        super().__init__(detail)
        self.delay_seconds = delay_seconds


class StatusTargetMissingError(
    Chat4AllError, status=404, title="Unknown platform message", slug="unknown-platform-message"
):
    """A status report names a platform message we have not recorded (yet)."""

"""Pigeon, a made-up but plausible messaging platform, as a deployment would add one: this module only.

- Sending: `POST {PIGEON_API_BASE}/accounts/{account_id}/messages` with `Authorization: Bearer {api_key}` and
  `{"to": <user id>, "text": ...}`; the answer `{"id": ...}` names the message.
- Checking credentials: `GET {PIGEON_API_BASE}/accounts/{account_id}` with the same bearer key answers the account
  `{"id": ...}`.
- Webhooks: `POST /webhooks/pigeon` with `{"account": <account id>, "events": [...]}`, each event a message
  (`{"type": "message", "id", "from": {"id", "name"}, "text", "ts"}`) or a status (`{"type": "status", "id",
  "status": "delivered"|"read"|"failed", "ts"}`), signed `X-Pigeon-Signature: sha256=<hex HMAC-SHA256 of the raw
  body with the account's webhook_secret>`.

Importing it registers the platform (`chat4all.channels.registry.register`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from chat4all.channels.http import HttpConnector
from chat4all.channels.meta import hmac_sha256_matches
from chat4all.channels.registry import register
from chat4all.domain.credentials import ChannelCredentials
from chat4all.domain.errors import BadRequestError, ChannelOutcomeUnknownError
from chat4all.domain.models import InboundMessage, MessageStatus, Platform, ProviderReceipt, StatusReport
from chat4all.domain.platforms import CredentialCheck, PlatformDefinition

if TYPE_CHECKING:
    from collections.abc import Mapping

    from chat4all.domain.models import OutboundMessage

NAME = "PIGEON"
SIGNATURE_HEADER = "x-pigeon-signature"
STATUSES = {"delivered": MessageStatus.DELIVERED, "read": MessageStatus.READ, "failed": MessageStatus.FAILED}


class PigeonCredentials(ChannelCredentials):
    api_key: Annotated[str, StringConstraints(pattern=r"^[!-~]{8,512}$")]
    account_id: Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]{3,64}$")]
    webhook_secret: Annotated[str, StringConstraints(pattern=r"^[!-~]{8,512}$")]


class _Sender(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str
    name: str | None = None


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    id: str
    ts: int
    text: str | None = None
    status: str | None = None
    sender: _Sender | None = Field(default=None, alias="from")


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore")
    account: str
    events: list[_Event]


class PigeonConnector(HttpConnector):
    platform: ClassVar[Platform] = Platform.register(NAME)
    credentials_model: ClassVar[type[ChannelCredentials]] = PigeonCredentials

    def verify_webhook(self, credentials: Mapping[str, str], headers: Mapping[str, str], raw_body: bytes) -> bool:
        return hmac_sha256_matches(credentials["webhook_secret"], raw_body, headers.get(SIGNATURE_HEADER))

    def account_ids(self, payload: dict[str, Any]) -> list[str]:
        account = payload.get("account")
        return [account] if isinstance(account, str) and account else []

    def parse_webhook(
        self, payload: dict[str, Any], account_id: str | None = None
    ) -> list[InboundMessage | StatusReport]:
        try:
            envelope = _Envelope.model_validate(payload)
        except ValidationError as exc:
            raise BadRequestError(f"not a Pigeon webhook: {exc.errors()[0]['msg']}") from exc
        found: list[InboundMessage | StatusReport] = []
        for event in envelope.events:
            at = datetime.fromtimestamp(event.ts, UTC)
            if event.type == "message" and event.sender is not None:
                found.append(
                    InboundMessage(
                        platform=self.platform,
                        platform_message_id=event.id,
                        platform_user_id=event.sender.id,
                        sender_name=event.sender.name,
                        text=event.text,
                        at=at,
                        account_id=envelope.account,
                    )
                )
            elif event.type == "status" and event.status in STATUSES:
                found.append(
                    StatusReport(
                        platform=self.platform,
                        platform_message_id=event.id,
                        status=STATUSES[event.status],
                        at=at,
                        account_id=envelope.account,
                    )
                )
        return found

    def send(self, credentials: Mapping[str, str], message: OutboundMessage) -> ProviderReceipt:
        reply = self.post_json(
            f"{self.api_base}/accounts/{credentials['account_id']}/messages",
            {"to": message.recipient, "text": message.text},
            headers={"Authorization": f"Bearer {credentials['api_key']}"},
        )
        message_id = reply.get("id")
        if not isinstance(message_id, str) or not message_id:
            raise ChannelOutcomeUnknownError(f"Pigeon reply has no id: {str(reply)[:300]}")
        return ProviderReceipt(platform_message_id=message_id)


def _refused_account(answer: Mapping[str, Any], credentials: Mapping[str, str]) -> tuple[str, str] | None:
    if answer.get("id") != credentials["account_id"]:
        return "credentials.account_id", "is not the account this api_key belongs to"
    return None


DEFINITION = register(
    PlatformDefinition(
        name=NAME,
        connector=PigeonConnector,
        api_base_variable="PIGEON_API_BASE",
        api_base_default="https://api.pigeon.example/v1",
        rate_limit=20,
        account_field="account_id",
        credential_check=CredentialCheck(
            path=lambda credentials: f"/accounts/{credentials['account_id']}",
            refused_field="credentials.api_key",
            bearer_field="api_key",
            refusal=_refused_account,
        ),
    )
)

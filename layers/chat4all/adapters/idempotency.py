"""Powertools idempotency records in Redis."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.idempotency.persistence.cache import CachePersistenceLayer

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord


class RedisIdempotencyStore(CachePersistenceLayer):
    """Powertools' cache persistence layer, keeping the payload hash when a record completes.

    Powertools 3.37 rewrites a completed record without its validation hash (the bug fixed for the
    TypeScript library as powertools-lambda-typescript#5705), so with payload validation on, every
    replay of a completed request failed as "payload does not match". Completion here writes the hash
    along with the result, as the in-progress record and the DynamoDB layer do.
    """

    def _update_record(self, data_record: DataRecord) -> None:
        mapping: dict[str, Any] = {
            self.data_attr: data_record.response_data,
            self.status_attr: data_record.status,
            self.expiry_attr: data_record.expiry_timestamp,
        }
        if self.payload_validation_enabled:
            mapping[self.validation_key_attr] = data_record.payload_hash
        self.client.set(
            name=data_record.idempotency_key,
            value=self._json_serializer(mapping),
            ex=self._get_expiry_second(data_record.expiry_timestamp),
        )

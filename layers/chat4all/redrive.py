"""Moves dead-lettered records back to their queues: `python -m chat4all.redrive [--route] [--status]`.

The route dead-letter queue's records go back to the route queue (same message group: one per conversation)
and the status dead-letter queue's to the status queue. The queues come from the environment the functions
have (ROUTE_QUEUE_URL, ROUTE_DEAD_LETTER_QUEUE_URL, STATUS_QUEUE_URL, STATUS_DEAD_LETTER_QUEUE_URL, and
AWS_ENDPOINT_URL where AWS is local); in AWS, take them from the stack's outputs. Locally, `make redrive`
does this for the running `make dev` stack (devstack/redrive.py).

Safe to run twice, or while the consumers run: each record is sent to its queue before it is deleted from
the dead-letter queue (a crash in between sends it again, with the same deduplication id on a FIFO queue),
and whatever comes back is harmless: the route function never sends a message that was sent or settled
(FAILED) already, and a status report applied before changes nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any

import boto3

BATCH = 10  # ReceiveMessage's and SendMessageBatch's own limit
# a received record stays invisible this long: long enough to send it on and delete it
VISIBILITY_SECONDS = 60


@dataclass(frozen=True)
class RedriveReport:
    moved: int
    refused: int


def redrive(sqs: Any, dead_letter_url: str, destination_url: str, *, limit: int | None = None) -> RedriveReport:
    """Move every record of the dead-letter queue (at most `limit`) to the destination queue."""
    fifo = destination_url.endswith(".fifo")
    moved = refused = 0
    while limit is None or moved + refused < limit:
        reply = sqs.receive_message(
            QueueUrl=dead_letter_url,
            MaxNumberOfMessages=BATCH,
            WaitTimeSeconds=1,
            VisibilityTimeout=VISIBILITY_SECONDS,
            MessageSystemAttributeNames=["MessageGroupId"],
            MessageAttributeNames=["All"],
        )
        records: list[dict[str, Any]] = reply.get("Messages", [])
        if not records:
            break
        entries = []
        for index, record in enumerate(records):
            entry: dict[str, Any] = {"Id": str(index), "MessageBody": record["Body"]}
            if fifo:
                entry["MessageGroupId"] = record.get("Attributes", {}).get("MessageGroupId") or "redrive"
                entry["MessageDeduplicationId"] = f"redrive-{record['MessageId']}"
            entries.append(entry)
        result = sqs.send_message_batch(QueueUrl=destination_url, Entries=entries)
        sent = {int(item["Id"]) for item in result.get("Successful", [])}
        refused += len(records) - len(sent)
        done = [{"Id": str(index), "ReceiptHandle": records[index]["ReceiptHandle"]} for index in sorted(sent)]
        if done:
            sqs.delete_message_batch(QueueUrl=dead_letter_url, Entries=done)
        moved += len(done)
        if not done:
            break  # the destination refuses everything: stop rather than spin
    return RedriveReport(moved, refused)


def _client(environ: dict[str, str]) -> Any:
    return boto3.client(
        "sqs",
        endpoint_url=environ.get("AWS_ENDPOINT_URL") or None,
        region_name=environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1",
    )


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--route", action="store_true", help="only the route dead-letter queue")
    parser.add_argument("--status", action="store_true", help="only the status dead-letter queue")
    arguments = parser.parse_args(argv)
    env = dict(os.environ if environ is None else environ)
    both = not arguments.route and not arguments.status
    pairs = []
    if both or arguments.route:
        pairs.append(("route", "ROUTE_DEAD_LETTER_QUEUE_URL", "ROUTE_QUEUE_URL"))
    if both or arguments.status:
        pairs.append(("status", "STATUS_DEAD_LETTER_QUEUE_URL", "STATUS_QUEUE_URL"))
    missing = [name for _, *names in pairs for name in names if not env.get(name)]
    if missing:
        print(f"redrive: set {', '.join(missing)}", file=sys.stderr)
        return 2
    sqs = _client(env)
    for label, source, destination in pairs:
        report = redrive(sqs, env[source], env[destination])
        print(f"{label}: {report.moved} records moved back to their queue, {report.refused} refused")
    return 0


if __name__ == "__main__":
    sys.exit(main())

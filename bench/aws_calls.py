"""Caller CPU per SQS SendMessage and EventBridge PutEvents: boto3 against the functions' signed JSON client.

`python -m bench.aws_calls [--calls 300]` starts a throwaway LocalStack (as the local stack does), makes the
calls from this process and prints the CPU this process spent per call (time.process_time), and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

from devstack.localstack import start_localstack
from devstack.processes import ProcessGroup
from devstack.stack import _ensure_layers_importable

if TYPE_CHECKING:
    from collections.abc import Callable


def measure(name: str, call: Callable[[int], Any], calls: int) -> None:
    for n in range(20):  # connections, caches
        call(-1 - n)
    cpu, wall = time.process_time(), time.perf_counter()
    for n in range(calls):
        call(n)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"| {name} | {1000 * cpu / calls:.2f} | {1000 * wall / calls:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=300)
    calls = parser.parse_args().calls
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    _ensure_layers_importable()
    from chat4all.adapters.aws_api import AwsJsonApi

    group = ProcessGroup(preferred_ports=False)
    url, localstack = start_localstack(Path(tempfile.mkdtemp(prefix="aws-calls-")), group)
    try:
        config = Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"})
        sqs = boto3.client("sqs", endpoint_url=url, region_name="us-east-1", config=config)
        events = boto3.client("events", endpoint_url=url, region_name="us-east-1", config=config)
        queue = sqs.create_queue(QueueName="bench.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
        events.create_event_bus(Name="bench")
        lean_sqs = AwsJsonApi("sqs", region="us-east-1", endpoint_url=url)
        lean_events = AwsJsonApi("events", region="us-east-1", endpoint_url=url)
        detail = json.dumps({"message_id": "m", "status": "SENT"})
        entry = {"Source": "chat4all", "DetailType": "MessageSent", "Detail": detail, "EventBusName": "bench"}

        def message(n: int, client: str) -> dict[str, Any]:
            group_id, dedupe = str(n % 20), f"{client}-{n}-{time.monotonic_ns()}"
            return {
                "QueueUrl": queue,
                "MessageBody": "{}",
                "MessageGroupId": group_id,
                "MessageDeduplicationId": dedupe,
            }

        print("| call | caller CPU ms | wall ms |\n| --- | --- | --- |")
        for _ in range(2):
            measure("boto3 SendMessage", lambda n: sqs.send_message(**message(n, "boto3")), calls)
            measure("signed JSON SendMessage", lambda n: lean_sqs.call("SendMessage", message(n, "lean")), calls)
            measure("boto3 PutEvents (2)", lambda n: events.put_events(Entries=[entry, entry]), calls)
            measure(
                "signed JSON PutEvents (2)", lambda n: lean_events.call("PutEvents", {"Entries": [entry, entry]}), calls
            )
    finally:
        localstack.stop()


if __name__ == "__main__":
    main()

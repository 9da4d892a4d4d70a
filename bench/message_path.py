"""Latency of the message path on the local stack: `python -m bench.message_path [--messages N]`.

Starts the whole platform (as `make test` does: own servers, fresh databases, a WhatsApp-format server),
then measures, one request at a time from one client:
- POST /v1/messages until the 202 (stored PENDING and enqueued);
- accept-to-platform: from sending the POST until the WhatsApp-format server received the message;
- POST /webhooks/whatsapp with a signed inbound message until the 200 (the contract: within a second);
- POST /webhooks/whatsapp with a signed status until the 200.
Prints a Markdown table for docs/BENCHMARKS.md. Traffic goes to 127.0.0.1 only, bounded by --messages.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import httpx

from devstack.stack import throwaway_platform
from tests.support.fake_whatsapp import FakeWhatsApp, message_webhook, sign, status_webhook


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[max(0, int(len(ordered) * 0.95) - 1)]
    return f"{statistics.median(ordered) * 1000:.1f} | {p95 * 1000:.1f} | {ordered[-1] * 1000:.1f}"


def run(messages: int) -> None:
    fake = FakeWhatsApp()
    run_id = uuid.uuid4().hex[:8]
    with throwaway_platform("bench", {"WHATSAPP_API_BASE": fake.url}) as platform:
        headers = {"Authorization": f"Bearer {platform.admin_api_key}"}
        with httpx.Client(base_url=platform.api_url, headers=headers, timeout=30) as api:
            secret = uuid.uuid4().hex
            credentials = {"access_token": "t", "phone_number_id": "1065", "app_secret": secret, "verify_token": "v"}
            api.post("/v1/channels", json={"platform": "WHATSAPP", "name": "bench", "credentials": credentials})
            agent = api.post("/v1/users", json={"display_name": "A", "user_type": "AGENT"}).json()["user_id"]
            customer = api.post("/v1/users", json={"display_name": "C", "user_type": "CUSTOMER"}).json()["user_id"]
            phone = "5511" + str(uuid.uuid4().int)[:9]
            api.post(f"/v1/users/{customer}/identities", json={"platform": "WHATSAPP", "platform_user_id": phone})
            conversation = api.post(
                "/v1/conversations",
                json={
                    "conversation_type": "ONE_TO_ONE",
                    "participants": [agent, customer],
                    "primary_channel": "WHATSAPP",
                },
            ).json()["conversation_id"]

            accept, end_to_end, inbound, status = [], [], [], []
            for n in range(messages):
                body = {"conversation_id": conversation, "sender_id": agent, "content": f"bench {n}"}
                started = time.perf_counter()
                response = api.post("/v1/messages", json=body)
                accept.append(time.perf_counter() - started)
                assert response.status_code == 202, response.text
                fake.wait_for(phone, n + 1, timeout=30)
                end_to_end.append(time.perf_counter() - started)
            wamids = [r.platform_message_id for r in fake.sent_to(phone)]
            for n in range(messages):
                raw = message_webhook("1065", f"wamid.in.{run_id}.{n}", phone, "C", f"inbound {n}")
                started = time.perf_counter()
                response = api.post(
                    "/webhooks/whatsapp", content=raw, headers={"X-Hub-Signature-256": sign(secret, raw)}
                )
                inbound.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
            for wamid in wamids:
                assert wamid is not None
                raw = status_webhook("1065", wamid, "delivered", phone)
                started = time.perf_counter()
                response = api.post(
                    "/webhooks/whatsapp", content=raw, headers={"X-Hub-Signature-256": sign(secret, raw)}
                )
                status.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
        print(f"\n{messages} of each, sequential, one client\n")
        print("| path | median ms | p95 ms | max ms |\n| --- | --- | --- | --- |")
        print(f"| POST /v1/messages -> 202 | {percentiles(accept)} |")
        print(f"| accept -> received by the WhatsApp-format server | {percentiles(end_to_end)} |")
        print(f"| POST /webhooks/whatsapp, inbound message -> 200 | {percentiles(inbound)} |")
        print(f"| POST /webhooks/whatsapp, status -> 200 | {percentiles(status)} |")
    fake.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200)
    run(parser.parse_args().messages)

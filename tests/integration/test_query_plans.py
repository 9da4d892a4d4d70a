"""Every MongoDB query the platform sends is answered from an index, never by reading the whole collection.

SecantusDB's planner scans the collection for filters mongod would answer from an index (two predicates on
one field, an `$or`, a field the index does not hold, `_id` plus anything in findAndModify); such a query
costs every request the whole history of the platform. This test records, with the server's profiler, what
the functions actually send during the message path and explains each query. See docs/MONGODB.md.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pymongo import MongoClient

from chat4all.adapters.mongo import DEFAULT_DATABASE
from tests.integration.test_inbound import receive
from tests.integration.test_message_path import post_webhook, send_until_sent, wait_for_status
from tests.support.fake_whatsapp import sign, status_webhook

if TYPE_CHECKING:
    from collections.abc import Iterator

    from devstack.stack import LocalPlatform
    from tests.integration.conftest import Api, WhatsAppSetup
    from tests.support.fake_whatsapp import FakeWhatsApp

COLLECTIONS = {"messages", "conversations", "participations", "status_history", "deliveries", "lanes"}


def exercise_the_platform(api: Api, setup: WhatsAppSetup, fake_whatsapp: FakeWhatsApp) -> None:
    """The message path and the conversation operations, as agents and admins use them."""
    key = api.created("/v1/api-keys", {"name": "plans", "role": "agent", "user_id": setup.agent_id})["api_key"]
    accepted, wamid = send_until_sent(api, setup, fake_whatsapp, "query plans")
    for status in ("delivered", "read"):
        body = status_webhook(setup.credentials["phone_number_id"], wamid, status, setup.customer_phone)
        assert post_webhook(api, body, sign(setup.credentials["app_secret"], body)) == 200
    wait_for_status(api, accepted["message_id"], "READ")
    receive(api, setup, setup.customer_phone, "an answer")
    receive(api, setup, "5511" + str(uuid.uuid4().int)[:9], "a stranger writes")
    conversation = f"/v1/conversations/{setup.conversation_id}"
    for path in (
        f"{conversation}/messages?limit=2",
        conversation,
        "/v1/conversations?limit=2",
        f"/v1/users/{setup.customer_id}",
        f"/v1/messages/{accepted['message_id']}",
    ):
        assert api.call("GET", path, key=key).status_code == 200, path
    page = api.call("GET", f"{conversation}/messages?limit=1").json()
    assert api.call("GET", f"{conversation}/messages?limit=1&before={page['next_cursor']}").status_code == 200
    newcomer = api.created("/v1/users", {"display_name": "Plan Newcomer", "user_type": "AGENT"})["user_id"]
    assert api.call("DELETE", f"{conversation}/participants/{setup.agent_id}").status_code == 204
    assert api.call("POST", f"{conversation}/participants", json={"user_id": newcomer}).status_code == 201
    assert api.call("GET", f"/v1/conversations?participant={newcomer}").status_code == 200
    exercise_a_group(api, setup, fake_whatsapp)


def exercise_a_group(api: Api, setup: WhatsAppSetup, fake_whatsapp: FakeWhatsApp) -> None:
    """A GROUP message: its fan-out, its lanes, its aggregate, a status webhook on one of its deliveries."""
    phone = "55119" + str(uuid.uuid4().int)[:8]
    other = api.created("/v1/users", {"display_name": "Plan Group", "user_type": "CUSTOMER"})["user_id"]
    api.created(f"/v1/users/{other}/identities", {"platform": "WHATSAPP", "platform_user_id": phone})
    group = api.created(
        "/v1/conversations",
        {
            "conversation_type": "GROUP",
            "participants": [setup.agent_id, setup.customer_id, other],
            "primary_channel": "WHATSAPP",
            "channel_id": setup.channel["channel_id"],
        },
    )["conversation_id"]
    body = {"conversation_id": group, "sender_id": setup.agent_id, "content": "plans for a group"}
    response = api.call("POST", "/v1/messages", json=body)
    assert response.status_code == 202, response.text
    message_id = response.json()["message_id"]
    wait_for_status(api, message_id, "SENT")
    [request] = fake_whatsapp.wait_for(phone, 1)
    assert request.platform_message_id is not None
    report = status_webhook(setup.credentials["phone_number_id"], request.platform_message_id, "delivered", phone)
    assert post_webhook(api, report, sign(setup.credentials["app_secret"], report)) == 200
    assert api.call("GET", f"/v1/messages/{message_id}").status_code == 200


def queries_of(entry: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any] | None]]:
    """(collection, filter, sort) of each query a profiled operation ran."""
    command = entry.get("command", {})
    if "find" in command:
        yield command["find"], command.get("filter", {}), command.get("sort")
    elif "findAndModify" in command:
        yield command["findAndModify"], command.get("query", {}), command.get("sort")
    elif "count" in command:
        yield command["count"], command.get("query", {}), None
    elif "aggregate" in command:
        stages = command.get("pipeline", [])
        if stages and "$match" in stages[0]:
            yield command["aggregate"], stages[0]["$match"], None
    elif "update" in command or "delete" in command:
        name = "update" if "update" in command else "delete"
        for statement in command.get(f"{name}s", []):
            query = statement.get("q", {})
            # update and delete find a plain `_id` equality by the id (measured: 0.8 ms at 5,000 messages
            # against 32 ms for the same filter in findAndModify), whatever else the filter holds
            if isinstance(query.get("_id"), str):
                continue
            yield command[name], query, None


def scans(plan: dict[str, Any]) -> bool:
    if plan.get("stage") == "COLLSCAN":
        return True
    children = [plan[k] for k in ("inputStage", "queryPlan") if isinstance(plan.get(k), dict)]
    children += [p for p in plan.get("inputStages", []) if isinstance(p, dict)]
    return any(scans(child) for child in children)


def test_no_query_of_the_message_path_reads_the_whole_collection(
    platform: LocalPlatform, api: Api, whatsapp_conversation: WhatsAppSetup, fake_whatsapp: FakeWhatsApp
) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(platform.urls["mongo"], tz_aware=True)
    db = client.get_default_database(DEFAULT_DATABASE)
    started = datetime.now(UTC)
    time.sleep(0.01)
    db.command("profile", 2)
    try:
        exercise_the_platform(api, whatsapp_conversation, fake_whatsapp)
    finally:
        db.command("profile", 0)
    profiled = [
        e for e in db.system.profile.find({"ts": {"$gte": started}}) if e.get("ns", "").split(".", 1)[-1] in COLLECTIONS
    ]
    queries = [q for entry in profiled for q in queries_of(entry) if q[0] in COLLECTIONS]
    assert len(queries) >= 20, f"the profiler saw only {len(queries)} queries"
    seen = {collection for collection, _, _ in queries}
    assert {"deliveries", "lanes"} <= seen, "no GROUP query was seen"
    # a user's list, the open conversation of an inbound message, a message's participants' activity
    assert "participations" in seen, "no participations query was seen"
    # every status move was appended to the time-series collection (SecantusDB has them), and its reads are indexed
    assert any(e.get("op") == "insert" and e["ns"].endswith(".status_history") for e in profiled)
    queries += [("status_history", {"meta.message_id": "any"}, {"at": 1})]
    scanning = []
    for collection, query, sort in queries:
        cursor = db[collection].find(query)
        if sort:
            cursor = cursor.sort(list(sort.items()))
        plan = cursor.explain()["queryPlanner"]["winningPlan"]
        if scans(plan):
            scanning.append((collection, query, sort))
    client.close()
    assert scanning == []

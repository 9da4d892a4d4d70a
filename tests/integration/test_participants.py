"""Participants joining and leaving, and listing conversations, over HTTP against the real servers."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.integration.conftest import Api, WhatsAppSetup


def agent_with_key(api: Api, name: str) -> tuple[str, str]:
    user = api.created("/v1/users", {"display_name": name, "user_type": "AGENT"})
    key = api.created("/v1/api-keys", {"name": name, "role": "agent", "user_id": user["user_id"]})["api_key"]
    return str(user["user_id"]), str(key)


def send(api: Api, conversation_id: str, sender_id: str, content: str, key: str | None = None) -> dict[str, Any]:
    body = {"conversation_id": conversation_id, "sender_id": sender_id, "content": content}
    response = api.call("POST", "/v1/messages", json=body, key=key)
    assert response.status_code == 202, response.text
    return dict(response.json())


def history(api: Api, conversation_id: str, key: str | None = None) -> list[str]:
    response = api.call("GET", f"/v1/conversations/{conversation_id}/messages?limit=200", key=key)
    assert response.status_code == 200, response.text
    return [item["content"] for item in response.json()["items"]]


def test_an_agent_hands_over_and_the_new_agent_sees_history_from_its_join(
    api: Api, whatsapp_conversation: WhatsAppSetup
) -> None:
    # GIVEN a conversation of agent A (with a key) and a customer, with one message in it
    setup = whatsapp_conversation
    key_a = api.created("/v1/api-keys", {"name": "a", "role": "agent", "user_id": setup.agent_id})["api_key"]
    before = send(api, setup.conversation_id, setup.agent_id, "before the hand-over", key=key_a)
    agent_b, key_b = agent_with_key(api, "Bia Agent")
    path = f"/v1/conversations/{setup.conversation_id}/participants"
    # WHEN agent A leaves the ONE_TO_ONE conversation (it is full until then) and adds agent B
    assert api.call("POST", path, json={"user_id": agent_b}, key=key_a).status_code == 422
    assert api.call("DELETE", f"{path}/{setup.agent_id}", key=key_a).status_code == 204
    # THEN A no longer reads the conversation nor sends in it, and cannot add anyone
    assert api.call("GET", f"/v1/conversations/{setup.conversation_id}", key=key_a).status_code == 403
    refused = api.call(
        "POST",
        "/v1/messages",
        json={"conversation_id": setup.conversation_id, "sender_id": setup.agent_id, "content": "gone"},
        key=key_a,
    )
    assert refused.status_code == 403
    assert api.call("POST", path, json={"user_id": agent_b}, key=key_a).status_code == 403
    # AND an admin adds B, who sees the conversation and only what came after it joined
    added = api.call("POST", path, json={"user_id": agent_b})
    assert added.status_code == 201, added.text
    assert [p["user_id"] for p in added.json()["participants"]] == [setup.customer_id, agent_b]
    after = send(api, setup.conversation_id, agent_b, "after the hand-over", key=key_b)
    assert history(api, setup.conversation_id, key=key_b) == ["after the hand-over"]
    # nor the message or the status of what came before its join point, while it reads its own
    for read in ("", "/status"):
        earlier = api.call("GET", f"/v1/messages/{before['message_id']}{read}", key=key_b)
        assert earlier.status_code == 403, earlier.text
        assert api.call("GET", f"/v1/messages/{after['message_id']}{read}", key=key_b).status_code == 200
        assert api.call("GET", f"/v1/messages/{before['message_id']}{read}").status_code == 200  # the admin
    assert history(api, setup.conversation_id) == ["before the hand-over", "after the hand-over"]
    # AND adding B again is a conflict, removing someone who is not in it is 404
    assert api.call("POST", path, json={"user_id": agent_b}).status_code == 409
    assert api.call("DELETE", f"{path}/{setup.agent_id}").status_code == 404


def test_the_last_participant_stays_and_unknown_users_are_refused(
    api: Api, whatsapp_conversation: WhatsAppSetup
) -> None:
    setup = whatsapp_conversation
    path = f"/v1/conversations/{setup.conversation_id}/participants"
    assert api.call("DELETE", f"{path}/{setup.agent_id}").status_code == 204
    last = api.call("DELETE", f"{path}/{setup.customer_id}")
    assert last.status_code == 422
    assert last.headers["content-type"] == "application/problem+json"
    unknown = api.call("POST", path, json={"user_id": str(uuid.uuid4())})
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["field"] == "user_id"
    assert api.call("POST", path, json={"user_id": "not-a-uuid"}).status_code == 422
    assert api.call("POST", path, json={"user_id": setup.agent_id, "role": "boss"}).status_code == 422
    assert (
        api.call("POST", f"/v1/conversations/{uuid.uuid4()}/participants", json={"user_id": setup.agent_id}).status_code
        == 404
    )
    remaining = api.call("GET", f"/v1/conversations/{setup.conversation_id}").json()["participants"]
    assert [p["user_id"] for p in remaining] == [setup.customer_id]


def test_concurrent_joins_never_overfill_nor_add_anyone_twice(api: Api, whatsapp_conversation: WhatsAppSetup) -> None:
    # GIVEN a ONE_TO_ONE conversation with one seat free
    setup = whatsapp_conversation
    path = f"/v1/conversations/{setup.conversation_id}/participants"
    assert api.call("DELETE", f"{path}/{setup.agent_id}").status_code == 204
    candidates = [agent_with_key(api, f"Candidate {n}")[0] for n in range(8)]
    # WHEN eight agents are added at once
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(
            pool.map(lambda user_id: api.call("POST", path, json={"user_id": user_id}).status_code, candidates)
        )
    # THEN exactly one got the seat and the others were told the conversation is full
    assert sorted(statuses) == [201] + [422] * 7
    participants = api.call("GET", f"/v1/conversations/{setup.conversation_id}").json()["participants"]
    assert len(participants) == 2
    assert participants[1]["user_id"] == candidates[statuses.index(201)]


def test_the_same_user_added_at_once_from_many_clients_joins_once(
    api: Api, whatsapp_conversation: WhatsAppSetup
) -> None:
    setup = whatsapp_conversation
    extra = agent_with_key(api, "Third")[0]
    group = api.created(
        "/v1/conversations",
        {
            "conversation_type": "GROUP",
            "participants": [setup.agent_id, setup.customer_id, extra],
            "primary_channel": "WHATSAPP",
            "channel_id": setup.channel["channel_id"],
        },
    )
    newcomer = agent_with_key(api, "Newcomer")[0]
    path = f"/v1/conversations/{group['conversation_id']}/participants"
    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(lambda _: api.call("POST", path, json={"user_id": newcomer}).status_code, range(6)))
    assert sorted(statuses) == [201] + [409] * 5
    participants = api.call("GET", f"/v1/conversations/{group['conversation_id']}").json()["participants"]
    assert [p["user_id"] for p in participants].count(newcomer) == 1


def test_listing_pages_through_an_agents_conversations_newest_activity_first(
    api: Api, whatsapp_conversation: WhatsAppSetup
) -> None:
    # GIVEN an agent in five conversations, the oldest one made the most active by a new message
    setup = whatsapp_conversation
    agent_id, key = agent_with_key(api, "Lia Lister")
    created = []
    for _ in range(5):
        body = {
            "conversation_type": "ONE_TO_ONE",
            "participants": [agent_id, setup.customer_id],
            "primary_channel": "WHATSAPP",
            "channel_id": setup.channel["channel_id"],
        }
        created.append(api.created("/v1/conversations", body, key=key)["conversation_id"])
    send(api, created[0], agent_id, "bump", key=key)
    # WHEN the agent pages through its conversations two at a time
    seen: list[str] = []
    cursor = None
    while True:
        query = "limit=2" + (f"&before={cursor}" if cursor else "")
        page = api.call("GET", f"/v1/conversations?{query}", key=key)
        assert page.status_code == 200, page.text
        seen += [c["conversation_id"] for c in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    # THEN it sees exactly its five, newest activity first, each once
    assert seen == [created[0], *reversed(created[1:])]
    # AND an admin sees the same for that participant, an agent never another user's
    by_admin = api.call("GET", f"/v1/conversations?participant={agent_id}&limit=200").json()["items"]
    assert [c["conversation_id"] for c in by_admin] == seen
    assert api.call("GET", f"/v1/conversations?participant={setup.agent_id}", key=key).status_code == 403
    # AND a cursor it did not issue, an unknown parameter and a bad limit are 422 problems
    for query in ("before=bm9wZQ", "colour=blue", "limit=0", "participant=nope"):
        response = api.call("GET", f"/v1/conversations?{query}", key=key)
        assert response.status_code == 422, f"{query}: {response.text}"
        assert response.headers["content-type"] == "application/problem+json"


def test_a_users_list_follows_its_joins_and_leaves(api: Api, whatsapp_conversation: WhatsAppSetup) -> None:
    # the lists read `participations`, written in the same transaction as each participant change
    setup = whatsapp_conversation
    agent_b, key_b = agent_with_key(api, "Lena Lister")
    key_a = api.created("/v1/api-keys", {"name": "a", "role": "agent", "user_id": setup.agent_id})["api_key"]

    def listed(key: str) -> list[str]:
        response = api.call("GET", "/v1/conversations?limit=200", key=key)
        assert response.status_code == 200, response.text
        return [c["conversation_id"] for c in response.json()["items"]]

    assert setup.conversation_id in listed(key_a)
    assert listed(key_b) == []
    path = f"/v1/conversations/{setup.conversation_id}/participants"
    assert api.call("DELETE", f"{path}/{setup.agent_id}").status_code == 204
    assert api.call("POST", path, json={"user_id": agent_b}).status_code == 201
    assert setup.conversation_id not in listed(key_a)
    assert listed(key_b) == [setup.conversation_id]
    # a message by the newcomer shows as the conversation's activity in its list
    send(api, setup.conversation_id, agent_b, "hello from B", key=key_b)
    [item] = api.call("GET", "/v1/conversations?limit=200", key=key_b).json()["items"]
    assert item["message_count"] == 1
    assert (
        item["last_activity_at"]
        == api.call("GET", f"/v1/conversations/{setup.conversation_id}").json()["last_activity_at"]
    )

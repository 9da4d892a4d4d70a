"""Bad input about GROUP conversations (issue 16): sizes outside 3 to 100 are 422, a send by someone who is
not a participant is 403 and stores nothing. Real servers, over HTTP."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest

from tests.integration.test_bad_input import assert_problem

if TYPE_CHECKING:
    from tests.integration.conftest import Api


def users(api: Api, count: int, user_type: str = "CUSTOMER") -> list[str]:
    def one(n: int) -> str:
        return str(api.created("/v1/users", {"display_name": f"Member {n}", "user_type": user_type})["user_id"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, range(count)))


def group_body(participants: list[str], channel: dict[str, Any]) -> dict[str, Any]:
    return {
        "conversation_type": "GROUP",
        "participants": participants,
        "primary_channel": "WHATSAPP",
        "channel_id": channel["channel_id"],
    }


def conversation_ids_of(api: Api, user_id: str) -> list[str]:
    page = api.call("GET", f"/v1/conversations?participant={user_id}&limit=200")
    assert page.status_code == 200, page.text
    return [c["conversation_id"] for c in page.json()["items"]]


@pytest.fixture(scope="module")
def hundred(api: Api) -> list[str]:
    return users(api, 101)


def test_a_group_of_two_or_of_101_is_422_and_nothing_is_created(
    api: Api, hundred: list[str], whatsapp_channel: tuple[dict[str, Any], dict[str, str]]
) -> None:
    channel, _ = whatsapp_channel
    for participants in (hundred[:2], hundred[:101], hundred[:2] + hundred[:2]):
        problem = assert_problem(api.call("POST", "/v1/conversations", json=group_body(participants, channel)), 422)
        assert [e["field"] for e in problem["errors"]] == ["participants"], problem
    # none of them is in a conversation: nothing was stored for any of the refused bodies
    assert conversation_ids_of(api, hundred[0]) == []
    assert conversation_ids_of(api, hundred[100]) == []


def test_a_group_of_100_is_full_and_a_101st_participant_is_422(
    api: Api, hundred: list[str], whatsapp_channel: tuple[dict[str, Any], dict[str, str]]
) -> None:
    channel, _ = whatsapp_channel
    group = api.created("/v1/conversations", group_body(hundred[:100], channel))
    assert len(group["participants"]) == 100
    path = f"/v1/conversations/{group['conversation_id']}/participants"
    problem = assert_problem(api.call("POST", path, json={"user_id": hundred[100]}), 422)
    assert [e["field"] for e in problem["errors"]] == ["user_id"], problem
    after = api.call("GET", f"/v1/conversations/{group['conversation_id']}").json()
    assert [p["user_id"] for p in after["participants"]] == hundred[:100]
    # a seat freed is a seat to take: the 101st joins once someone left
    assert api.call("DELETE", f"{path}/{hundred[99]}").status_code == 204
    joined = api.call("POST", path, json={"user_id": hundred[100]})
    assert joined.status_code == 201, joined.text
    assert len(joined.json()["participants"]) == 100


def test_a_group_of_three_takes_a_fourth(api: Api, whatsapp_channel: tuple[dict[str, Any], dict[str, str]]) -> None:
    channel, _ = whatsapp_channel
    members = users(api, 4)
    group = api.created("/v1/conversations", group_body(members[:3], channel))
    added = api.call("POST", f"/v1/conversations/{group['conversation_id']}/participants", json={"user_id": members[3]})
    assert added.status_code == 201, added.text


def test_a_send_to_a_group_by_someone_not_in_it_is_403_and_stores_nothing(
    api: Api, whatsapp_channel: tuple[dict[str, Any], dict[str, str]]
) -> None:
    channel, _ = whatsapp_channel
    [agent, *customers] = users(api, 1, "AGENT") + users(api, 2)
    group = api.created("/v1/conversations", group_body([agent, *customers], channel))
    conversation_id = group["conversation_id"]
    outsider = users(api, 1, "AGENT")[0]
    outsider_key = api.created("/v1/api-keys", {"name": "outsider", "role": "agent", "user_id": outsider})["api_key"]
    message_id = str(uuid.uuid4())
    body = {"message_id": message_id, "conversation_id": conversation_id, "sender_id": outsider, "content": "hi all"}

    # as the outsider itself (an agent key), and on its behalf by an admin: 403 both
    assert_problem(api.call("POST", "/v1/messages", json=body, key=outsider_key), 403)
    assert_problem(api.call("POST", "/v1/messages", json=body), 403)
    # someone who left is an outsider too
    left = {**body, "message_id": str(uuid.uuid4()), "sender_id": customers[0]}
    assert api.call("DELETE", f"/v1/conversations/{conversation_id}/participants/{customers[0]}").status_code == 204
    assert_problem(api.call("POST", "/v1/messages", json=left), 403)

    # nothing was stored: no count, no sequence taken, no message under either id
    stored = api.call("GET", f"/v1/conversations/{conversation_id}").json()
    assert stored["message_count"] == 0
    assert api.call("GET", f"/v1/conversations/{conversation_id}/messages").json()["items"] == []
    for refused in (message_id, left["message_id"]):
        assert api.call("GET", f"/v1/messages/{refused}").status_code == 404
    # and the next participant's message takes sequence 1: the refusals took none
    accepted = api.call(
        "POST", "/v1/messages", json={"conversation_id": conversation_id, "sender_id": agent, "content": "first"}
    )
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["sequence"] == 1

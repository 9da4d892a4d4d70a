"""Every file in events/ (the sample events `sam local invoke` takes), invoked through the local runtime's Lambda
Invoke, gets the answer its function gives to the same request over HTTP; and the secrets the functions read at
cold start are in no function's environment and no function's log line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.waiting import wait_until

if TYPE_CHECKING:
    import httpx

    from devstack.stack import LocalPlatform
    from tests.integration.conftest import Api, WhatsAppSetup

EVENTS = Path(__file__).resolve().parents[2] / "events"
# event file -> the function it is for
FUNCTIONS = {
    "health.json": "IngestFunction",
    "send-message.json": "IngestFunction",
    "webhook-whatsapp-verify.json": "IngestFunction",
    "get-user.json": "IdentityFunction",
    "list-conversation-messages.json": "ConversationsFunction",
    "get-message-status.json": "StatusFunction",
    "sqs-route-job.json": "RouteFunction",
    "sqs-status-report.json": "StatusFunction",
    "sqs-route-dead-letter.json": "DeadLetterFunction",
    "scheduled-sweep.json": "SweeperFunction",
}


def event(name: str, **values: str) -> dict[str, Any]:
    text = (EVENTS / name).read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    assert "{{" not in text, f"{name}: a placeholder is left"
    return dict(json.loads(text))


def invoke(platform: LocalPlatform, name: str, **values: str) -> Any:
    result = platform.invoke(FUNCTIONS[name], event(name, **values))
    assert result.ok, result.payload
    return result.json()


def over_http(api: Api, ev: dict[str, Any]) -> httpx.Response:
    """The same request as the event, made over HTTP to the local HTTP API."""
    query = ev.get("rawQueryString") or ""
    headers = {k: v for k, v in ev["headers"].items() if k not in ("host", "content-length")}
    return api.client.request(
        ev["requestContext"]["http"]["method"],
        ev["rawPath"] + (f"?{query}" if query else ""),
        headers=headers,
        content=ev.get("body", "").encode(),
    )


def queue_arn(platform: LocalPlatform, logical_id: str) -> str:
    assert platform.stack is not None
    return "arn:aws:sqs:us-east-1:000000000000:" + platform.stack.resolve({"Ref": logical_id}).rsplit("/", 1)[-1]


def test_every_event_file_is_exercised() -> None:
    assert {p.name for p in EVENTS.glob("*.json")} == set(FUNCTIONS)


def test_http_events_get_the_answer_their_function_gives_over_http(
    platform: LocalPlatform, api: Api, whatsapp_conversation: WhatsAppSetup
) -> None:
    setup = whatsapp_conversation
    values = {
        "API_KEY": platform.admin_api_key,
        "CONVERSATION_ID": setup.conversation_id,
        "SENDER_ID": setup.agent_id,
        "USER_ID": setup.customer_id,
        "VERIFY_TOKEN": setup.credentials["verify_token"],
    }
    sent = invoke(platform, "send-message.json", **values)
    assert sent["statusCode"] == 202
    values["MESSAGE_ID"] = json.loads(sent["body"])["message_id"]
    for name in (
        "health.json",
        "send-message.json",
        "webhook-whatsapp-verify.json",
        "get-user.json",
        "list-conversation-messages.json",
        "get-message-status.json",
    ):
        ev = event(name, **values)
        answer = invoke(platform, name, **values)
        response = over_http(api, ev)
        assert answer["statusCode"] == response.status_code, (name, answer, response.text)
        assert answer["statusCode"] < 300, (name, answer)
        if response.headers["content-type"].startswith("text/plain"):
            assert answer["body"] == response.text == "1158201444"  # the challenge, echoed
        else:
            assert set(json.loads(answer["body"])) == set(response.json()), name
    # and a key that is not one gets the same 401 problem both ways
    ev = event("get-user.json", **(values | {"API_KEY": "c4a_not_a_key"}))
    answer = platform.invoke("IdentityFunction", ev).json()
    assert answer["statusCode"] == over_http(api, ev).status_code == 401


def test_queue_and_schedule_events_are_consumed_as_their_function_consumes_them(
    platform: LocalPlatform, api: Api, whatsapp_conversation: WhatsAppSetup
) -> None:
    setup = whatsapp_conversation
    accepted = api.call(
        "POST",
        "/v1/messages",
        json={"conversation_id": setup.conversation_id, "sender_id": setup.agent_id, "content": "events"},
    ).json()
    message_id = accepted["message_id"]

    def message() -> dict[str, Any]:
        return dict(api.call("GET", f"/v1/messages/{message_id}").json())

    wait_until(lambda: message()["status"] == "SENT", 60, "the message SENT")
    values = {
        "MESSAGE_ID": message_id,
        "CONVERSATION_ID": setup.conversation_id,
        "PLATFORM_MESSAGE_ID": message()["platform_message_id"],
        "CHANNEL_ID": setup.channel["channel_id"],
        "ROUTE_QUEUE_ARN": queue_arn(platform, "RouteQueue"),
        "STATUS_QUEUE_ARN": queue_arn(platform, "StatusQueue"),
        "ROUTE_DEAD_LETTER_QUEUE_ARN": queue_arn(platform, "RouteDeadLetterQueue"),
    }
    # a route job for a conversation whose message went out already: nothing to send, nothing failed
    assert invoke(platform, "sqs-route-job.json", **values) == {"batchItemFailures": []}
    assert message()["status"] == "SENT"
    # the channel reports it DELIVERED: applied, and read back over HTTP
    assert invoke(platform, "sqs-status-report.json", **values) == {"batchItemFailures": []}
    assert api.call("GET", f"/v1/messages/{message_id}/status").json()["status"] == "DELIVERED"
    # a dead-lettered job of a message settled already leaves it as it is
    assert invoke(platform, "sqs-route-dead-letter.json", **values) == {"batchItemFailures": []}
    assert message()["status"] == "DELIVERED"
    # the scheduled sweep answers its report
    report = invoke(platform, "scheduled-sweep.json")
    assert {"found", "requeued", "events_published"} <= set(report)


def secret_values(platform: LocalPlatform) -> list[str]:
    from devstack.stack import app_role_password

    password = app_role_password(platform.urls["postgres"], platform.options.environ)
    return [platform.urls["postgres_app"], password, platform.urls["mongo"], platform.urls["redis"]]


def test_no_secret_value_is_in_a_function_environment(platform: LocalPlatform) -> None:
    assert platform.runtime is not None
    for logical_id in ("IngestFunction", "RouteFunction", "StatusFunction", "IdentityFunction", "SweeperFunction"):
        environment = platform.function_environment(logical_id)
        assert {"DATABASE_SECRET_ARN", "MONGODB_URI_SECRET_ARN", "REDIS_URL_SECRET_ARN"} <= set(environment)
        assert not {"DATABASE_URL", "MONGODB_URI", "REDIS_URL"} & set(environment)
        for value in secret_values(platform):
            assert not any(value in v for v in environment.values()), logical_id


@pytest.mark.usefixtures("whatsapp_conversation")
def test_no_secret_value_is_in_a_function_log_line(platform: LocalPlatform, api: Api) -> None:
    # the functions have read their secrets (a request through each HTTP function at least)
    assert api.call("GET", "/health").status_code == 200
    assert api.call("GET", "/v1/channels").status_code == 200
    logs = sorted((platform.options.state_dir / "logs" / "functions").glob("*.log"))
    assert {p.stem for p in logs} >= {"IngestFunction", "IdentityFunction"}
    for path in logs:
        text = path.read_text(errors="replace")
        for value in secret_values(platform):
            assert value not in text, f"{path.name} names a secret"

"""Each function's role grants exactly the AWS actions, on exactly the resources, its code can call (derived from
the code: tests/infra/aws_calls.py), with SAM's policy templates expanded by its own transform. LocalStack enforces
no IAM, so a missing grant would otherwise first show in production."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from devstack.template import cloudformation, load_template
from tests.infra.aws_calls import (
    ALLOWED_MANAGED_POLICIES,
    S3_ACTIONS,
    adapter_operations,
    compare,
    granted,
    required,
)

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = load_template(ROOT / "template.yaml")
FUNCTIONS = sorted(lid for lid, res in TEMPLATE["Resources"].items() if res["Type"] == "AWS::Serverless::Function")


def differences(template: dict[str, Any]) -> dict[str, tuple[set[Any], set[Any]]]:
    """function -> (calls no grant allows, grants nothing calls), for the functions where either is not empty."""
    cfn = cloudformation(template)
    needs = required(template)
    found = {}
    for function in needs:
        missing, unused = compare(needs[function], granted(cfn, function)[0])
        if missing or unused:
            found[function] = (missing, unused)
    return found


def test_every_function_is_granted_exactly_what_its_code_calls() -> None:
    assert differences(TEMPLATE) == {}


def test_the_derivation_finds_every_aws_operation_the_adapters_call() -> None:
    """A call the walk from the functions misses would be neither required nor checked: every operation of every
    adapter is required by some function (the operator tools, redrive and prepare_databases, are not functions)."""
    needs = required(TEMPLATE)
    derived = {action.split(":", 1)[1] for grants in needs.values() for action, _ in grants}
    called = {
        S3_ACTIONS.get(op, op) for methods in adapter_operations().values() for ops in methods.values() for op in ops
    }
    assert called <= derived
    assert {"SendMessage", "SendMessageBatch", "PutEvents", "Decrypt", "Encrypt", "GetSecretValue"} <= called


def test_what_the_derivation_says_of_known_paths() -> None:
    needs = required(TEMPLATE)

    def actions(function: str) -> set[str]:
        return {action for action, _ in needs[function]}

    # only identity writes channel credentials; conversations read channel refs only, never credentials
    assert {f for f in FUNCTIONS if "kms:Encrypt" in actions(f)} == {"IdentityFunction"}
    assert "kms:Decrypt" not in actions("ConversationsFunction")
    # the route function sends GROUP lane jobs to its own queue, and copies failures to its dead-letter queue
    route_sends = {tuple(sorted(r)) for a, r in needs["RouteFunction"] if a.startswith("sqs:SendMessage")}
    assert route_sends == {("RouteQueue",), ("RouteDeadLetterQueue",)}
    # every function reads its three secrets at cold start
    for function in FUNCTIONS:
        assert len({r for a, r in needs[function] if a == "secretsmanager:GetSecretValue"}) == 3, function


@pytest.mark.parametrize("function", FUNCTIONS)
def test_only_the_managed_policies_for_logs_tracing_and_the_vpc(function: str) -> None:
    """No AWSLambdaSQSQueueExecutionRole (receive and delete on every queue): no SAM SQS event attaches it."""
    _, managed = granted(cloudformation(TEMPLATE), function)
    assert set(managed) <= ALLOWED_MANAGED_POLICIES
    events = TEMPLATE["Resources"][function]["Properties"].get("Events", {})
    assert all(event["Type"] != "SQS" for event in events.values())


def _policy_entries() -> list[tuple[str, int]]:
    return [
        (function, i)
        for function in FUNCTIONS
        for i, _ in enumerate(TEMPLATE["Resources"][function]["Properties"].get("Policies", []))
    ]


@pytest.mark.parametrize(("function", "index"), _policy_entries())
def test_removing_any_one_statement_fails_the_check(function: str, index: int) -> None:
    broken = copy.deepcopy(TEMPLATE)
    del broken["Resources"][function]["Properties"]["Policies"][index]
    found = differences(broken)
    assert set(found) == {function}
    missing, unused = found[function]
    assert missing and not unused


@pytest.mark.parametrize(
    ("function", "extra"),
    [
        (
            "ConversationsFunction",
            {"SQSSendMessagePolicy": {"QueueName": {"Fn::GetAtt": ["StatusQueue", "QueueName"]}}},
        ),
        ("RouteFunction", {"KMSEncryptPolicy": {"KeyId": {"Ref": "CredentialsKey"}}}),
        (
            "StatusFunction",
            {
                "Statement": [
                    {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": {"Fn::GetAtt": ["RouteQueue", "Arn"]}}
                ]
            },
        ),
        ("SweeperFunction", {"Statement": [{"Effect": "Allow", "Action": "events:PutEvents", "Resource": "*"}]}),
    ],
)
def test_a_grant_nothing_uses_fails_the_check(function: str, extra: dict[str, Any]) -> None:
    broadened = copy.deepcopy(TEMPLATE)
    broadened["Resources"][function]["Properties"].setdefault("Policies", []).append(extra)
    found = differences(broadened)
    assert set(found) == {function}
    missing, unused = found[function]
    assert unused and not missing

"""No secret value is in any function's environment in the template: the functions get the secrets' ARNs (and
read them at cold start); the NoEcho values only become the stack's own secrets."""

from __future__ import annotations

from pathlib import Path

from chat4all.config import SECRET_VARIABLES
from devstack.template import cloudformation, load_template
from tests.infra.aws_calls import template_names

TEMPLATE = load_template(Path(__file__).resolve().parents[2] / "template.yaml")


def test_no_function_environment_holds_a_secret_value() -> None:
    cfn = cloudformation(TEMPLATE)
    secret_parameters = {name for name, spec in cfn["Parameters"].items() if spec.get("NoEcho")}
    assert secret_parameters == {"DatabaseUrl", "MongoDbUri", "RedisUrl"}
    functions = {lid: res for lid, res in cfn["Resources"].items() if res["Type"] == "AWS::Lambda::Function"}
    # every SAM function of the template became one (the count follows the template as functions are added)
    assert len(functions) == sum(r["Type"] == "AWS::Serverless::Function" for r in TEMPLATE["Resources"].values())
    for logical_id, resource in functions.items():
        variables = resource["Properties"]["Environment"]["Variables"]
        for name, value in variables.items():
            assert not template_names(value) & secret_parameters, f"{logical_id} {name}"
        assert set(SECRET_VARIABLES.values()) <= set(variables), logical_id
        assert not {"DATABASE_URL", "MONGODB_URI", "REDIS_URL"} & set(variables), logical_id


def test_the_secret_values_go_only_into_the_stacks_own_secrets() -> None:
    cfn = cloudformation(TEMPLATE)
    users = {
        lid
        for lid, res in cfn["Resources"].items()
        if template_names(res.get("Properties", {})) & {"DatabaseUrl", "MongoDbUri", "RedisUrl"}
    }
    assert users == {"DatabaseUrlSecret", "MongoDbUriSecret", "RedisUrlSecret"}
    for logical_id in users:
        assert cfn["Resources"][logical_id]["Type"] == "AWS::SecretsManager::Secret"
    assert not template_names(cfn.get("Outputs", {})) & {"DatabaseUrl", "MongoDbUri", "RedisUrl"}

"""Reads the SAM template: short-form intrinsics, the infrastructure part, routes, subscriptions, environments."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

SERVERLESS_FUNCTION = "AWS::Serverless::Function"
# Resource types that the local runner stands in for, so they are never deployed.
LOCAL_ONLY_TYPE_PREFIXES = ("AWS::Serverless::", "AWS::Lambda::")
HTTP_EVENT_TYPES = ("HttpApi", "Api")
SUB_VARIABLE = re.compile(r"\$\{([^}]*)\}")


# ------------------------------------------------------------------------------------------ YAML


class CloudFormationLoader(yaml.SafeLoader):
    """A SafeLoader that turns the short-form intrinsic tags (!Ref, !GetAtt, !Sub ...) into long-form dicts."""


def _construct_any(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    raise yaml.constructor.ConstructorError(None, None, f"unexpected node for {node.tag}", node.start_mark)


def _intrinsic(key: str) -> Callable[[yaml.SafeLoader, yaml.Node], dict[str, Any]]:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
        return {key: _construct_any(loader, node)}

    return construct


def _construct_get_att(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
    value = _construct_any(loader, node)
    if isinstance(value, str):
        # "Resource.Attribute"; nested attribute names keep their dots ("Db.Endpoint.Address")
        resource, _, attribute = value.partition(".")
        value = [resource, attribute]
    return {"Fn::GetAtt": value}


CloudFormationLoader.add_constructor("!Ref", _intrinsic("Ref"))
CloudFormationLoader.add_constructor("!Condition", _intrinsic("Condition"))
CloudFormationLoader.add_constructor("!GetAtt", _construct_get_att)
for _name in (
    "Sub", "Join", "Select", "If", "Equals", "Split", "FindInMap", "ImportValue",
    "GetAZs", "Base64", "Not", "And", "Or", "Cidr", "Length", "ToJsonString",
):  # fmt: skip
    CloudFormationLoader.add_constructor(f"!{_name}", _intrinsic(f"Fn::{_name}"))


def load_template(path: Path) -> dict[str, Any]:
    """Parse a CloudFormation/SAM YAML template into plain long-form data."""
    with path.open(encoding="utf-8") as stream:
        data = yaml.load(stream, Loader=CloudFormationLoader)  # noqa: S506 - a SafeLoader subclass
    if not isinstance(data, dict) or not isinstance(data.get("Resources"), dict):
        raise ValueError(f"{path} is not a CloudFormation template (no Resources)")
    return data


# ------------------------------------------------------------------------------------------ references


def sub_references(template_string: str, local_names: frozenset[str] = frozenset()) -> Iterator[tuple[str, str]]:
    """(name, attribute) for each ${...} of an Fn::Sub string; attribute is "" for a Ref, ${!x} is skipped."""
    for match in SUB_VARIABLE.finditer(template_string):
        expression = match.group(1).strip()
        if not expression or expression.startswith("!") or expression in local_names:
            continue
        name, _, attribute = expression.partition(".")
        yield name, attribute


def referenced_names(value: Any) -> set[str]:
    """Logical ids and parameter names that a value refers to through Ref, Fn::GetAtt and Fn::Sub."""
    found: set[str] = set()
    if isinstance(value, list):
        for item in value:
            found |= referenced_names(item)
    elif isinstance(value, dict):
        if len(value) == 1:
            key, arg = next(iter(value.items()))
            if key == "Ref" and isinstance(arg, str):
                return {arg}
            if key == "Fn::GetAtt":
                target = arg[0] if isinstance(arg, list) and arg else str(arg).partition(".")[0]
                return {target} if isinstance(target, str) else referenced_names(target)
            if key == "Fn::Sub":
                text, variables = (arg[0], arg[1]) if isinstance(arg, list) else (arg, {})
                found |= {name for name, _ in sub_references(str(text), frozenset(variables))}
                return found | referenced_names(variables)
        for item in value.values():
            found |= referenced_names(item)
    return found


def attribute_references(value: Any) -> set[tuple[str, str]]:
    """(logical id, attribute) for every Fn::GetAtt and ${X.Attr} of Fn::Sub in a value."""
    found: set[tuple[str, str]] = set()
    if isinstance(value, list):
        for item in value:
            found |= attribute_references(item)
    elif isinstance(value, dict):
        get_att = value.get("Fn::GetAtt") if len(value) == 1 else None
        if isinstance(get_att, list) and len(get_att) == 2 and all(isinstance(part, str) for part in get_att):
            return {(get_att[0], get_att[1])}
        sub = value.get("Fn::Sub") if len(value) == 1 else None
        if sub is not None:
            text, variables = (sub[0], sub[1]) if isinstance(sub, list) else (sub, {})
            found |= {(name, attr) for name, attr in sub_references(str(text), frozenset(variables)) if attr}
            return found | attribute_references(variables)
        for item in value.values():
            found |= attribute_references(item)
    return found


def _resource_references(resource: dict[str, Any]) -> set[str]:
    depends_on = resource.get("DependsOn", [])
    found = {depends_on} if isinstance(depends_on, str) else set(depends_on)
    for key in ("Properties", "Metadata", "CreationPolicy", "UpdatePolicy"):
        found |= referenced_names(resource.get(key))
    return found


def _is_local_only(resource: dict[str, Any]) -> bool:
    return str(resource.get("Type", "")).startswith(LOCAL_ONLY_TYPE_PREFIXES)


# ------------------------------------------------------------------------------------------ infrastructure


def infrastructure_template(template: dict[str, Any]) -> dict[str, Any]:
    """A plain CloudFormation template of the resources that do not need Lambda or SAM, nor refer to them."""
    resources: dict[str, Any] = template["Resources"]
    dropped = {lid for lid, res in resources.items() if _is_local_only(res)}
    references = {lid: _resource_references(res) for lid, res in resources.items()}
    changed = True
    while changed:  # drop whatever refers to a dropped resource, until nothing more goes
        changed = False
        for lid, refs in references.items():
            if lid not in dropped and refs & dropped:
                dropped.add(lid)
                changed = True
    kept = {lid: res for lid, res in resources.items() if lid not in dropped}
    parameters: dict[str, Any] = template.get("Parameters", {})
    outputs = {
        name: output for name, output in template.get("Outputs", {}).items() if not referenced_names(output) & dropped
    }
    conditions: dict[str, Any] = template.get("Conditions", {})
    used = set().union(*(references[lid] for lid in kept), referenced_names(outputs), referenced_names(conditions))
    result: dict[str, Any] = {"AWSTemplateFormatVersion": template.get("AWSTemplateFormatVersion", "2010-09-09")}
    if "Description" in template:
        result["Description"] = template["Description"]
    needed_parameters = {name: spec for name, spec in parameters.items() if name in used}
    if needed_parameters:
        result["Parameters"] = needed_parameters
    for section in ("Mappings", "Conditions"):
        if template.get(section):
            result[section] = template[section]
    result["Resources"] = kept
    if outputs:
        result["Outputs"] = outputs
    return result


# ------------------------------------------------------------------------------------------ functions


@dataclass(frozen=True)
class HttpRoute:
    function: str
    method: str
    path: str
    authorizer: str | None = None  # the name of the HttpApi Lambda authorizer that guards the route


@dataclass(frozen=True)
class LambdaAuthorizer:
    """An HttpApi Lambda authorizer (SAM `Auth.Authorizers.<name>`)."""

    name: str
    function: str
    identity_headers: tuple[str, ...] = ()
    simple_responses: bool = False
    payload_version: str = "2.0"


@dataclass(frozen=True)
class QueueSubscription:
    function: str
    queue_logical_id: str
    batch_size: int = 10
    report_batch_item_failures: bool = False


def _functions(template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for logical_id, resource in template["Resources"].items():
        if resource.get("Type") == SERVERLESS_FUNCTION:
            yield logical_id, resource.get("Properties") or {}


def _events(template: dict[str, Any], types: tuple[str, ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    for logical_id, props in _functions(template):
        for event in (props.get("Events") or {}).values():
            if event.get("Type") in types:
                yield logical_id, event.get("Properties") or {}


def http_routes(template: dict[str, Any]) -> list[HttpRoute]:
    """Every HttpApi/Api event of every function; an HttpApi event without a route catches everything."""
    return [
        HttpRoute(
            logical_id,
            str(props.get("Method", "ANY")).upper(),
            str(props.get("Path", "/{proxy+}")),
            _route_authorizer(template, props),
        )
        for logical_id, props in _events(template, HTTP_EVENT_TYPES)
    ]


def _route_authorizer(template: dict[str, Any], event_props: dict[str, Any]) -> str | None:
    """The event's Auth.Authorizer, else its HttpApi's Auth.DefaultAuthorizer; NONE means no authorizer."""
    named = (event_props.get("Auth") or {}).get("Authorizer")
    if named is None:
        api = event_props.get("ApiId")
        api_id = api.get("Ref") if isinstance(api, dict) else None
        api_props = (template["Resources"].get(api_id) or {}).get("Properties") or {} if api_id else {}
        named = (api_props.get("Auth") or {}).get("DefaultAuthorizer")
    return None if named in (None, "NONE", "AWS_IAM") else str(named)


def http_authorizers(template: dict[str, Any]) -> dict[str, LambdaAuthorizer]:
    """The Lambda authorizers of every AWS::Serverless::HttpApi, by name; FunctionArn must be !GetAtt <fn>.Arn."""
    found: dict[str, LambdaAuthorizer] = {}
    for resource in template["Resources"].values():
        if resource.get("Type") != "AWS::Serverless::HttpApi":
            continue
        authorizers = ((resource.get("Properties") or {}).get("Auth") or {}).get("Authorizers") or {}
        for name, spec in authorizers.items():
            target = (spec.get("FunctionArn") or {}).get("Fn::GetAtt")
            if not (isinstance(target, list) and len(target) == 2 and target[1] == "Arn"):
                continue  # a JWT authorizer, or a function outside the template
            headers = tuple(str(h).lower() for h in (spec.get("Identity") or {}).get("Headers") or [])
            found[name] = LambdaAuthorizer(
                name,
                str(target[0]),
                headers,
                bool(spec.get("EnableSimpleResponses", False)),
                str(spec.get("AuthorizerPayloadFormatVersion", "2.0")),
            )
    return found


def queue_subscriptions(template: dict[str, Any]) -> list[QueueSubscription]:
    """Every SQS event of every function; the queue must be a resource of the template (Fn::GetAtt X.Arn)."""
    subscriptions = []
    for logical_id, props in _events(template, ("SQS",)):
        queue = props.get("Queue")
        target = queue.get("Fn::GetAtt") if isinstance(queue, dict) else None
        if not (isinstance(target, list) and len(target) == 2 and target[1] == "Arn"):
            raise ValueError(f"{logical_id}: SQS event Queue must be !GetAtt <queue>.Arn, got {queue!r}")
        subscriptions.append(
            QueueSubscription(
                function=logical_id,
                queue_logical_id=str(target[0]),
                batch_size=int(props.get("BatchSize", 10)),
                report_batch_item_failures="ReportBatchItemFailures" in (props.get("FunctionResponseTypes") or []),
            )
        )
    return subscriptions


def _function_properties(template: dict[str, Any], logical_id: str) -> dict[str, Any]:
    resource = template["Resources"].get(logical_id)
    if resource is None or resource.get("Type") != SERVERLESS_FUNCTION:
        raise KeyError(f"{logical_id} is not an {SERVERLESS_FUNCTION} of the template")
    props: dict[str, Any] = resource.get("Properties") or {}
    return props


def function_code_uri(template: dict[str, Any], logical_id: str) -> str:
    """The function's CodeUri (or the Globals' one), a path relative to the template."""
    props = _function_properties(template, logical_id)
    code_uri = props.get("CodeUri", template.get("Globals", {}).get("Function", {}).get("CodeUri"))
    if not isinstance(code_uri, str):
        raise ValueError(f"{logical_id}: CodeUri must be a local path, got {code_uri!r}")
    return code_uri


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def function_environment(template: dict[str, Any], logical_id: str, resolve: Callable[[Any], str]) -> dict[str, str]:
    """Globals.Function.Environment.Variables overlaid with the function's own, intrinsics resolved."""
    props = _function_properties(template, logical_id)
    global_vars = template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables") or {}
    own_vars = (props.get("Environment") or {}).get("Variables") or {}
    merged = {**global_vars, **own_vars}
    return {name: resolve(value) if isinstance(value, dict) else _plain(value) for name, value in merged.items()}

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
DEFAULT_ROUTE = "$default"
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
    authorizer: str | None = None  # the name of the API's Lambda authorizer that guards it, if any


@dataclass(frozen=True)
class LambdaAuthorizer:
    """A Lambda authorizer of an HTTP API (SAM `Auth.Authorizers.<name>` with a FunctionArn)."""

    name: str
    function: str
    payload_version: str = "2.0"
    simple_responses: bool = False
    identity_headers: tuple[str, ...] = ()
    identity_query_strings: tuple[str, ...] = ()
    reauthorize_every_seconds: int = 300  # API Gateway's default when a TTL is not given


@dataclass(frozen=True)
class QueueSubscription:
    function: str
    queue_logical_id: str
    batch_size: int = 10
    report_batch_item_failures: bool = False
    batching_window_seconds: int = 0
    maximum_concurrency: int | None = None


@dataclass(frozen=True)
class ScheduleSubscription:
    """An EventBridge rule schedule (`Schedule`) or an EventBridge Scheduler schedule (`ScheduleV2`)."""

    function: str
    name: str
    kind: str
    expression: str
    input: str | None = None
    timezone: str = "UTC"


@dataclass(frozen=True)
class FunctionConfig:
    """What Lambda needs to run one AWS::Serverless::Function, Globals applied; paths relative to the template."""

    logical_id: str
    code_uri: str
    handler: str
    runtime: str
    timeout_seconds: int
    memory_mb: int
    reserved_concurrency: int | None
    layer_paths: tuple[str, ...]
    # the resource's `Metadata.LocalConcurrency`: containers the local runtime gives it when nothing caps it
    # (AWS ignores resource Metadata)
    local_concurrency: int | None = None


def _functions(template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for logical_id, resource in template["Resources"].items():
        if resource.get("Type") == SERVERLESS_FUNCTION:
            yield logical_id, resource.get("Properties") or {}


def _events(template: dict[str, Any], types: tuple[str, ...]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for logical_id, props in _functions(template):
        for event_name, event in (props.get("Events") or {}).items():
            if event.get("Type") in types:
                yield logical_id, event_name, event.get("Properties") or {}


def function_names(template: dict[str, Any]) -> list[str]:
    return [logical_id for logical_id, _ in _functions(template)]


def _get_att_target(value: Any, attribute: str) -> str | None:
    target = value.get("Fn::GetAtt") if isinstance(value, dict) else None
    if isinstance(target, list) and len(target) == 2 and target[1] == attribute and isinstance(target[0], str):
        return target[0]
    return None


def _api_auth(template: dict[str, Any], api_logical_id: str) -> dict[str, Any]:
    resource = template["Resources"].get(api_logical_id) or {}
    auth: dict[str, Any] = (resource.get("Properties") or {}).get("Auth") or {}
    return auth


def http_routes(template: dict[str, Any]) -> list[HttpRoute]:
    """Every HttpApi/Api event of every function; an HttpApi event without Path and Method is `$default`.

    A route is guarded by its own `Auth.Authorizer`, else by its API's `Auth.DefaultAuthorizer`;
    `Authorizer: NONE` opts it out.
    """
    routes = []
    events = (
        (logical_id, event.get("Type"), event.get("Properties") or {})
        for logical_id, function in _functions(template)
        for event in (function.get("Events") or {}).values()
        if event.get("Type") in HTTP_EVENT_TYPES
    )
    for logical_id, event_type, props in events:
        api_ref = props.get("ApiId") or props.get("RestApiId")
        api_id = api_ref.get("Ref") if isinstance(api_ref, dict) else None
        default = _api_auth(template, api_id).get("DefaultAuthorizer") if isinstance(api_id, str) else None
        authorizer = (props.get("Auth") or {}).get("Authorizer", default)
        # an HttpApi event without Path and Method is the API's $default route: whatever no other route takes
        catch_all = event_type == "HttpApi" and "Path" not in props and "Method" not in props
        path = DEFAULT_ROUTE if catch_all else str(props.get("Path", "/{proxy+}"))
        routes.append(
            HttpRoute(
                logical_id,
                str(props.get("Method", "ANY")).upper(),
                path,
                None if authorizer in (None, "NONE", "AWS_IAM") else str(authorizer),
            )
        )
    return routes


def http_authorizers(template: dict[str, Any]) -> dict[str, LambdaAuthorizer]:
    """The Lambda authorizers of every AWS::Serverless::HttpApi, by name; other kinds cannot run locally."""
    found: dict[str, LambdaAuthorizer] = {}
    for api_id, resource in template["Resources"].items():
        if resource.get("Type") != "AWS::Serverless::HttpApi":
            continue
        for name, spec in (_api_auth(template, api_id).get("Authorizers") or {}).items():
            function = _get_att_target(spec.get("FunctionArn"), "Arn")
            if function is None:
                raise ValueError(f"{api_id} authorizer {name}: only Lambda authorizers (FunctionArn: !GetAtt X.Arn)")
            version = str(spec.get("AuthorizerPayloadFormatVersion", ""))
            if version != "2.0":
                raise ValueError(f"{api_id} authorizer {name}: payload format {version!r}; the local runtime has 2.0")
            identity = spec.get("Identity") or {}
            if identity.get("Context") or identity.get("StageVariables"):
                raise ValueError(f"{api_id} authorizer {name}: only header and query string identity sources")
            found[name] = LambdaAuthorizer(
                name=name,
                function=function,
                payload_version=version,
                simple_responses=bool(spec.get("EnableSimpleResponses", False)),
                identity_headers=tuple(str(h) for h in identity.get("Headers") or ()),
                identity_query_strings=tuple(str(q) for q in identity.get("QueryStrings") or ()),
                reauthorize_every_seconds=int(identity.get("ReauthorizeEvery", 300)),
            )
    return found


def queue_subscriptions(template: dict[str, Any]) -> list[QueueSubscription]:
    """Every enabled SQS event of every function; the queue must be a resource of the template (!GetAtt X.Arn)."""
    subscriptions = []
    for logical_id, _, props in _events(template, ("SQS",)):
        queue = _get_att_target(props.get("Queue"), "Arn")
        if queue is None:
            raise ValueError(f"{logical_id}: SQS event Queue must be !GetAtt <queue>.Arn, got {props.get('Queue')!r}")
        if props.get("Enabled", True) is False:
            continue
        scaling = props.get("ScalingConfig") or {}
        subscriptions.append(
            QueueSubscription(
                function=logical_id,
                queue_logical_id=queue,
                batch_size=int(props.get("BatchSize", 10)),
                report_batch_item_failures="ReportBatchItemFailures" in (props.get("FunctionResponseTypes") or []),
                batching_window_seconds=int(props.get("MaximumBatchingWindowInSeconds", 0)),
                maximum_concurrency=int(scaling["MaximumConcurrency"]) if "MaximumConcurrency" in scaling else None,
            )
        )
    return subscriptions


def schedule_subscriptions(template: dict[str, Any]) -> list[ScheduleSubscription]:
    """Every enabled Schedule (EventBridge rule) and ScheduleV2 (EventBridge Scheduler) event of every function."""
    schedules = []
    for logical_id, event_name, props in _events(template, ("Schedule", "ScheduleV2")):
        kind = "Schedule"
        expression = props.get("Schedule")
        if "ScheduleExpression" in props:
            kind, expression = "ScheduleV2", props["ScheduleExpression"]
        if not isinstance(expression, str):
            raise ValueError(f"{logical_id}.{event_name}: the schedule expression must be a plain string")
        if props.get("Enabled", True) is False or str(props.get("State", "ENABLED")).upper() == "DISABLED":
            continue
        raw_input = props.get("Input")
        schedules.append(
            ScheduleSubscription(
                function=logical_id,
                name=str(props.get("Name") or event_name),
                kind=kind,
                expression=expression,
                input=None if raw_input is None else str(raw_input),
                timezone=str(props.get("ScheduleExpressionTimezone") or "UTC"),
            )
        )
    return schedules


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


def _global_function_property(template: dict[str, Any], props: dict[str, Any], name: str, default: Any) -> Any:
    return props.get(name, template.get("Globals", {}).get("Function", {}).get(name, default))


def _layer_path(template: dict[str, Any], logical_id: str, layer: Any) -> str:
    """Where a layer's Python packages are, as Lambda mounts them at /opt/python."""
    ref = layer.get("Ref") if isinstance(layer, dict) else None
    resource = template["Resources"].get(ref) if isinstance(ref, str) else None
    content_uri = (resource or {}).get("Properties", {}).get("ContentUri")
    if not resource or resource.get("Type") != "AWS::Serverless::LayerVersion" or not isinstance(content_uri, str):
        raise ValueError(f"{logical_id}: layer {layer!r} is not a local AWS::Serverless::LayerVersion of the template")
    build_method = str((resource.get("Metadata") or {}).get("BuildMethod", ""))
    # `sam build` puts a python BuildMethod layer's ContentUri under python/; otherwise ContentUri is /opt itself
    return content_uri if build_method.startswith("python") else f"{content_uri.rstrip('/')}/python"


def function_config(template: dict[str, Any], logical_id: str) -> FunctionConfig:
    props = _function_properties(template, logical_id)
    global_layers = template.get("Globals", {}).get("Function", {}).get("Layers") or []
    layers = [*global_layers, *(props.get("Layers") or [])]  # SAM puts the Globals' layers first
    reserved = _global_function_property(template, props, "ReservedConcurrentExecutions", None)
    local = (template["Resources"][logical_id].get("Metadata") or {}).get("LocalConcurrency")
    if local is not None and (not isinstance(local, int) or isinstance(local, bool) or local < 1):
        raise ValueError(f"{logical_id}: Metadata.LocalConcurrency must be a positive integer, not {local!r}")
    return FunctionConfig(
        logical_id=logical_id,
        code_uri=function_code_uri(template, logical_id),
        handler=str(_global_function_property(template, props, "Handler", "app.lambda_handler")),
        runtime=str(_global_function_property(template, props, "Runtime", "python3.13")),
        timeout_seconds=int(_global_function_property(template, props, "Timeout", 3)),
        memory_mb=int(_global_function_property(template, props, "MemorySize", 128)),
        reserved_concurrency=None if reserved is None else int(reserved),
        layer_paths=tuple(_layer_path(template, logical_id, layer) for layer in layers),
        local_concurrency=local,
    )

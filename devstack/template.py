"""The SAM template as CloudFormation runs it: SAM's own transform (aws-sam-translator), and what the local
runtime reads from the plain CloudFormation it gives (functions, HTTP API routes, SQS event source mappings,
schedules) and what goes to LocalStack (every other resource)."""

from __future__ import annotations

import copy
import functools
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
from samtranslator.model.exceptions import InvalidDocumentException  # type: ignore[import-untyped]
from samtranslator.parser.parser import Parser  # type: ignore[import-untyped]
from samtranslator.translator.translator import Translator  # type: ignore[import-untyped]
from samtranslator.yaml_helper import yaml_parse  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

REGION = "us-east-1"
# a local CodeUri or ContentUri goes through the transform as s3://LOCAL_BUCKET/<path>, and is read back from it
LOCAL_BUCKET = "local"
DEFAULT_ROUTE = "$default"
ANY_METHOD = "x-amazon-apigateway-any-method"
# what the local runtime stands in for: never deployed to LocalStack
LOCAL_TYPE_PREFIXES = ("AWS::Lambda::", "AWS::ApiGatewayV2::", "AWS::IAM::Role")
FUNCTION_ARN = re.compile(r"\$\{(\w+)\.Arn\}")
SUB_NAME = re.compile(r"\$\{([^!.}][^.}]*)")
RATE = re.compile(r"^rate\((\d+) (minute|hour|day)s?\)$")
UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}
UNSUPPORTED_MAPPING_PROPERTIES = ("MaximumBatchingWindowInSeconds", "ScalingConfig", "FilterCriteria")


def load_template(path: Path) -> dict[str, Any]:
    """A SAM or CloudFormation YAML template as written, its short-form intrinsics in long form."""
    data = yaml_parse(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("Resources"), dict):
        raise ValueError(f"{path} is not a CloudFormation template (no Resources)")
    return data


def cloudformation(template: dict[str, Any]) -> dict[str, Any]:
    """The template after the SAM transform (a template without a Transform is that already)."""
    if "Transform" not in template:
        return template
    return copy.deepcopy(_translate(json.dumps(template, sort_keys=True)))


@functools.lru_cache(maxsize=4)
def _translate(template_json: str) -> dict[str, Any]:
    sam = json.loads(template_json)
    property_sets = [res.get("Properties") or {} for res in sam["Resources"].values()]
    for properties in [*property_sets, sam.get("Globals", {}).get("Function", {})]:
        for key in ("CodeUri", "ContentUri"):
            if isinstance(properties.get(key), str):
                properties[key] = f"s3://{LOCAL_BUCKET}/{properties[key]}"
    translator = Translator({}, Parser(), boto_session=boto3.session.Session(region_name=REGION))
    try:
        translated: dict[str, Any] = translator.translate(sam, parameter_values={}, passthrough_metadata=True)
    except InvalidDocumentException as exc:
        raise ValueError("; ".join(str(error) for error in exc.causes)) from exc
    return translated


def _resources(cfn: dict[str, Any], type_: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for logical_id, resource in cfn["Resources"].items():
        if resource.get("Type") == type_:
            yield logical_id, resource.get("Properties") or {}


def referenced_names(value: Any) -> set[str]:
    """Logical ids and parameters a value refers to through Ref, Fn::GetAtt and Fn::Sub."""
    if isinstance(value, list):
        return set().union(*(referenced_names(item) for item in value))
    if not isinstance(value, dict):
        return set()
    found = set().union(*(referenced_names(item) for item in value.values()))
    if isinstance(value.get("Ref"), str):
        found.add(value["Ref"])
    if isinstance(value.get("Fn::GetAtt"), list):
        found.add(value["Fn::GetAtt"][0])
    sub = value.get("Fn::Sub")
    if sub is not None:
        found |= set(SUB_NAME.findall(sub[0] if isinstance(sub, list) else sub))
    return found


def infrastructure_template(cfn: dict[str, Any]) -> dict[str, Any]:
    """The resources the local runtime does not stand in for, nor refer to one it does, and their outputs."""
    resources: dict[str, Any] = cfn["Resources"]
    dropped = {lid for lid, res in resources.items() if str(res.get("Type")).startswith(LOCAL_TYPE_PREFIXES)}
    references = {lid: referenced_names(res) | set(res.get("DependsOn", [])) for lid, res in resources.items()}
    while more := {lid for lid, refs in references.items() if lid not in dropped and refs & dropped}:
        dropped |= more
    outputs = {k: v for k, v in cfn.get("Outputs", {}).items() if not referenced_names(v) & dropped}
    sections = ("AWSTemplateFormatVersion", "Parameters", "Conditions", "Mappings")
    infra = {key: cfn[key] for key in sections if key in cfn}
    return infra | {"Resources": {k: v for k, v in resources.items() if k not in dropped}, "Outputs": outputs}


def evaluate_conditions(cfn: dict[str, Any], parameters: dict[str, str]) -> dict[str, bool]:
    """The template's Conditions for these parameter values (Fn::Equals, Not, And, Condition; Ref and Fn::Join
    of parameters: what template.yaml's Conditions use), as CloudFormation evaluates them."""
    declared: dict[str, Any] = cfn.get("Parameters", {})
    conditions: dict[str, Any] = cfn.get("Conditions", {})
    done: dict[str, bool] = {}

    logic: dict[str, Callable[[list[Any]], bool]] = {
        "Fn::Equals": lambda args: str(value(args[0])) == str(value(args[1])),
        "Fn::Not": lambda args: not value(args[0]),
        "Fn::And": lambda args: all(value(arg) for arg in args),
    }

    def value(node: Any) -> Any:
        if not isinstance(node, dict):
            return node if isinstance(node, list) else plain(node)
        if "Ref" in node:
            spec = declared.get(node["Ref"], {})
            raw = parameters.get(node["Ref"], plain(spec.get("Default", "")))
            return raw.split(",") if str(spec.get("Type", "")).startswith("CommaDelimited") else raw
        if "Fn::Join" in node:
            separator, items = node["Fn::Join"]
            items = value(items)
            return separator.join(str(value(item)) for item in (items if isinstance(items, list) else [items]))
        if "Condition" in node:
            return condition(node["Condition"])
        ((function, args),) = node.items()
        if function not in logic:
            raise ValueError(f"condition function {function} is not evaluated locally")
        return logic[function](args)

    def condition(name: str) -> bool:
        if name not in done:
            done[name] = bool(value(conditions[name]))
        return done[name]

    return {name: condition(name) for name in conditions}


# ------------------------------------------------------------------------------------------ functions


@dataclass(frozen=True)
class FunctionConfig:
    """What Lambda needs to run one AWS::Lambda::Function; paths relative to the template."""

    logical_id: str
    code_uri: str
    handler: str
    runtime: str
    timeout_seconds: int
    memory_mb: int
    reserved_concurrency: int | None
    layer_paths: tuple[str, ...]
    environment: dict[str, Any]  # values as the template has them (intrinsics unresolved)
    # the resource's `Metadata.LocalConcurrency`: containers the local runtime gives it when nothing caps it
    # (AWS ignores resource Metadata)
    local_concurrency: int | None = None


def _local_path(logical_id: str, location: Any) -> str:
    if not isinstance(location, dict) or location.get("S3Bucket") != LOCAL_BUCKET:
        raise ValueError(f"{logical_id}: its code must be a local folder of the template, not {location!r}")
    return str(location["S3Key"])


def _layer_path(cfn: dict[str, Any], logical_id: str, layer: Any) -> str:
    """Where a layer's Python packages are: a python BuildMethod layer's ContentUri (`sam build` puts its
    requirements and code under python/, which Lambda mounts at /opt/python)."""
    resource = cfn["Resources"].get(layer.get("Ref")) if isinstance(layer, dict) else None
    build = str(((resource or {}).get("Metadata") or {}).get("BuildMethod", ""))
    if resource is None or resource.get("Type") != "AWS::Lambda::LayerVersion" or not build.startswith("python"):
        raise ValueError(f"{logical_id}: layer {layer!r} is not a python BuildMethod layer of the template")
    return _local_path(logical_id, resource["Properties"].get("Content"))


def functions(template: dict[str, Any]) -> dict[str, FunctionConfig]:
    cfn = cloudformation(template)
    found = {}
    for logical_id, props in _resources(cfn, "AWS::Lambda::Function"):
        local = (cfn["Resources"][logical_id].get("Metadata") or {}).get("LocalConcurrency")
        if local is not None and (not isinstance(local, int) or isinstance(local, bool) or local < 1):
            raise ValueError(f"{logical_id}: Metadata.LocalConcurrency must be a positive integer, not {local!r}")
        reserved = props.get("ReservedConcurrentExecutions")
        found[logical_id] = FunctionConfig(
            logical_id=logical_id,
            code_uri=_local_path(logical_id, props.get("Code")),
            handler=str(props["Handler"]),
            runtime=str(props["Runtime"]),
            timeout_seconds=int(props.get("Timeout", 3)),
            memory_mb=int(props.get("MemorySize", 128)),
            reserved_concurrency=None if reserved is None else int(reserved),
            layer_paths=tuple(_layer_path(cfn, logical_id, layer) for layer in props.get("Layers", [])),
            environment=dict((props.get("Environment") or {}).get("Variables") or {}),
            local_concurrency=local,
        )
    return found


def plain(value: Any) -> str:
    """A template scalar as an environment variable's string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def function_environment(template: dict[str, Any], logical_id: str, resolve: Callable[[Any], str]) -> dict[str, str]:
    """The function's variables (the Globals' and its own, as the transform merged them), intrinsics resolved."""
    variables = functions(template)[logical_id].environment
    return {name: resolve(value) if isinstance(value, dict) else plain(value) for name, value in variables.items()}


# ------------------------------------------------------------------------------------------ event sources


@dataclass(frozen=True)
class HttpRoute:
    function: str
    method: str
    path: str


def http_routes(template: dict[str, Any]) -> list[HttpRoute]:
    """Every route of every HTTP API, from the OpenAPI body the transform wrote ($default included)."""
    routes = []
    for api_id, props in _resources(cloudformation(template), "AWS::ApiGatewayV2::Api"):
        for path, operations in (props.get("Body") or {}).get("paths", {}).items():
            for method, operation in operations.items():
                integration = operation.get("x-amazon-apigateway-integration") or {}
                target = FUNCTION_ARN.search(json.dumps(integration.get("uri")))
                if target is None or integration.get("payloadFormatVersion") != "2.0":
                    raise ValueError(f"{api_id} {method} {path}: only Lambda proxy integrations of payload 2.0")
                if any(name != "NONE" for scheme in operation.get("security", []) for name in scheme):
                    raise ValueError(f"{api_id} {method} {path}: the local HTTP API runs no authorizers")
                routes.append(HttpRoute(target.group(1), "ANY" if method == ANY_METHOD else method.upper(), path))
    return routes


@dataclass(frozen=True)
class QueueSubscription:
    """An SQS event source mapping (AWS::Lambda::EventSourceMapping)."""

    function: str
    queue_logical_id: str
    batch_size: int = 10
    report_batch_item_failures: bool = False


def _target(value: Any, attribute: str) -> str:
    if isinstance(value, dict) and isinstance(value.get("Ref"), str) and attribute == "":
        return str(value["Ref"])
    target = value.get("Fn::GetAtt") if isinstance(value, dict) else None
    if not isinstance(target, list) or target[1:] != [attribute]:
        raise ValueError(f"{value!r} does not name a resource of the template")
    return str(target[0])


def queue_subscriptions(template: dict[str, Any]) -> list[QueueSubscription]:
    """Every enabled event source mapping; its queue must be a resource of the template."""
    subscriptions = []
    for logical_id, props in _resources(cloudformation(template), "AWS::Lambda::EventSourceMapping"):
        unsupported = [name for name in UNSUPPORTED_MAPPING_PROPERTIES if name in props]
        if unsupported:
            raise ValueError(f"{logical_id}: the local runtime does not run {', '.join(unsupported)}")
        if props.get("Enabled", True) is False:
            continue
        subscriptions.append(
            QueueSubscription(
                function=_target(props["FunctionName"], ""),
                queue_logical_id=_target(props["EventSourceArn"], "Arn"),
                batch_size=int(props.get("BatchSize", 10)),
                report_batch_item_failures="ReportBatchItemFailures" in props.get("FunctionResponseTypes", []),
            )
        )
    return subscriptions


@dataclass(frozen=True)
class ScheduleSubscription:
    """An EventBridge rule that invokes a function of the template on a `rate(...)` schedule."""

    function: str
    rule: str
    period_seconds: int


def rate_seconds(expression: str) -> int:
    rate = RATE.match(expression)
    if rate is None or int(rate.group(1)) < 1:
        raise ValueError(f"{expression!r}: the local runtime runs rate(N minutes|hours|days) schedules only")
    return int(rate.group(1)) * UNIT_SECONDS[rate.group(2)]


def schedule_subscriptions(template: dict[str, Any]) -> list[ScheduleSubscription]:
    cfn = cloudformation(template)
    local = {logical_id for logical_id, _ in _resources(cfn, "AWS::Lambda::Function")}
    schedules = []
    for rule, props in _resources(cfn, "AWS::Events::Rule"):
        if "ScheduleExpression" not in props or props.get("State", "ENABLED") != "ENABLED":
            continue
        for target in props.get("Targets", []):
            if (function := _target(target["Arn"], "Arn")) in local:
                period = rate_seconds(str(props["ScheduleExpression"]))
                schedules.append(ScheduleSubscription(function, rule, period))
    return schedules

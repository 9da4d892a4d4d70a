"""Which AWS API calls each function's code can make, derived from the code, and what the template grants.

The code side (an AST walk, no import of the functions):

1. Every AWS call is `<client>.call("Operation", ...)` on an `AwsJsonApi` (chat4all.adapters.aws_api), in a method
   of an adapter class under chat4all/adapters; no module a function reaches imports boto3.
2. `chat4all.bootstrap` builds the adapters: a factory constructs `Adapter(aws_client("sqs"),
   settings().require("route_queue_url"))`, which says the service and the resource (the environment variable
   whose template value is the resource) of every call the adapter makes. A function's factories are those its
   reached code calls as `bootstrap.<factory>()`, and the factories those call.
3. Which adapter methods a function reaches: a call graph by name from `functions/<name>/app.py` through every
   function and method under chat4all (a call or a reference to `x.name` or `name` reaches every def so named):
   generous by construction, and narrowed only by the class's factory being reached (2.) and by `self.name` in a
   class, which reaches that class's own `name` (and its subclasses') when it has one.
4. What is not a `call(...)` site: the SQS event source mappings of the function's template resource (Lambda
   polls with the function's role: ReceiveMessage, DeleteMessage, GetQueueAttributes), whose queues are also
   what SqsVisibility (the consumers' back-off) acts on; and the secrets every function's Settings reads at
   cold start (chat4all.config.SECRET_VARIABLES, the `*_SECRET_ARN` variables of its environment).
5. An object a reached factory constructs runs its `__init__`; what `__init__` assigns to `self.<name>` is reached
   where `<name>` is (KmsCredentialCipher's `_decrypt_cached` wraps `_decrypt`: reached through `decrypt` only).
6. An EventBuffer publishes only what was put into it: its flush is followed only where something can put events
   into a buffer (`collect`, `publish`, `publish_many` reached without it).

The template side: the SAM transform (aws-sam-translator) expands the policy templates into each function's
role; a statement's resource is the set of template names (resources, parameters) it refers to.
"""

from __future__ import annotations

import ast
import fnmatch
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.template import cloudformation

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "layers" / "chat4all"
BOOTSTRAP = PACKAGE / "bootstrap.py"
# AwsJsonApi's service name -> IAM's action prefix
IAM_PREFIX = {"sqs": "sqs", "events": "events", "kms": "kms", "secretsmanager": "secretsmanager", "s3": "s3"}
# S3 (chat4all.adapters.s3.S3Api, built by bootstrap's s3_api()): the operations whose IAM action has another name;
# `presign("Op")` and `presign_post` are calls too (the URL acts with the function's grants)
S3_ACTIONS = {
    "HeadObject": "GetObject",
    "CreateMultipartUpload": "PutObject",
    "UploadPart": "PutObject",
    "CompleteMultipartUpload": "PutObject",
    "ListParts": "ListMultipartUploadParts",
    "HeadBucket": "ListBucket",
}
CLIENT_FACTORIES = {"aws_client": None, "s3_api": "s3"}  # factory -> its service (None: the factory's argument)
# Lambda's SQS event source mapping polls with the function's role (AWSLambdaSQSQueueExecutionRole's actions)
EVENT_SOURCE_ACTIONS = ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes")
# the managed policies SAM attaches: logs (always), X-Ray (Tracing: Active), ENIs (VpcConfig)
ALLOWED_MANAGED_POLICIES = {
    "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
    "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess",
    "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole",
}
# (not AWSLambdaSQSQueueExecutionRole, receive and delete on every queue, which a SAM SQS event would attach: the
# template's event source mappings are resources of their own)
# adapters whose calls act on the queue a record came from, not on a resource their factory names
EVENT_QUEUE_ADAPTERS = {"SqsVisibility"}

Grant = tuple[str, frozenset[str]]  # (action or action pattern, the template names its resource refers to)


# ------------------------------------------------------------------------------------------ code


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _call_name(node: ast.Call) -> str | None:
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


@functools.cache
def adapter_operations() -> dict[str, dict[str, set[str]]]:
    """class -> method -> the AWS operations it calls (`<x>.call("Op", ...)` with a literal name)."""
    found: dict[str, dict[str, set[str]]] = {}
    for path in sorted((PACKAGE / "adapters").rglob("*.py")):
        for cls in (n for n in _parse(path).body if isinstance(n, ast.ClassDef)):
            for method in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
                for node in ast.walk(method):
                    if (
                        isinstance(node, ast.Call)
                        and isinstance(node.func, ast.Attribute)
                        and node.func.attr in ("call", "presign")
                        and node.args
                        and isinstance(node.args[0], ast.Constant)
                        and isinstance(node.args[0].value, str)
                    ):
                        found.setdefault(cls.name, {}).setdefault(method.name, set()).add(node.args[0].value)
                    elif isinstance(node, ast.Call) and _call_name(node) == "presign_post":
                        found.setdefault(cls.name, {}).setdefault(method.name, set()).add("PutObject")
    return found


@dataclass(frozen=True)
class Construction:
    """An adapter a bootstrap factory builds: the AWS service of its client and the variable naming its resource."""

    adapter: str
    service: str
    variable: str | None


def _setting_name(node: ast.expr) -> str | None:
    """`settings().require("x")`, `config.require("x")`, `settings().x`, `config.x` -> "X"."""
    if isinstance(node, ast.Call) and _call_name(node) == "require" and node.args:
        arg = node.args[0]
        return str(arg.value).upper() if isinstance(arg, ast.Constant) else None
    if isinstance(node, ast.Attribute):
        return node.attr.upper()
    return None


@dataclass
class Bootstrap:
    calls: dict[str, set[str]]  # factory -> the factories it calls
    built: dict[str, list[Construction]]  # factory -> the AWS adapters it constructs
    classes: dict[str, set[str]]  # factory -> every class it constructs (their __init__ runs)
    names: dict[str, set[str]]  # factory -> the names its body refers to (bootstrap.consume runs consume_batch)


def bootstrap_graph(adapters: set[str]) -> Bootstrap:
    module = _parse(BOOTSTRAP)
    factories = {n.name: n for n in module.body if isinstance(n, ast.FunctionDef)}
    calls: dict[str, set[str]] = {}
    built: dict[str, list[Construction]] = {}
    classes: dict[str, set[str]] = {}
    names: dict[str, set[str]] = {}
    for name, node in factories.items():
        names[name] = _referenced(node)[0]
        calls[name] = {c for n in ast.walk(node) if isinstance(n, ast.Call) and (c := _call_name(n)) in factories}
        classes[name] = {
            c for n in ast.walk(node) if isinstance(n, ast.Call) and (c := _call_name(n) or "")[:1].isupper()
        }
        for call in (n for n in ast.walk(node) if isinstance(n, ast.Call) and _call_name(n) in adapters):
            client = call.args[0] if call.args else None
            factory = _call_name(client) if isinstance(client, ast.Call) else None
            if factory not in CLIENT_FACTORIES or (CLIENT_FACTORIES[factory] is None and not client.args):
                raise AssertionError(f"bootstrap.{name}: {_call_name(call)} is not built over aws_client(...)")
            service = CLIENT_FACTORIES[factory] or client.args[0].value
            variable = _setting_name(call.args[1]) if len(call.args) > 1 else None
            built.setdefault(name, []).append(Construction(str(_call_name(call)), str(service), variable))
    return Bootstrap(calls, built, classes, names)


@dataclass
class _Def:
    module: str
    qualname: str  # Class.method, function, or Class.attribute (what __init__ assigns)
    names: set[str]  # names it calls or refers to (`x.name`, `name`)
    bootstrap: set[str]  # `bootstrap.<factory>` it refers to
    imports_boto3: bool


def _referenced(node: ast.AST, cls: str = "") -> tuple[set[str], set[str]]:
    """Names referred to (`self.x` in a method of class C as `self:C:x`) and `bootstrap.<factory>`s."""
    names, factories = set(), set()
    for n in ast.walk(node):
        if isinstance(n, ast.Attribute):
            own = cls and isinstance(n.value, ast.Name) and n.value.id == "self"
            names.add(f"self:{cls}:{n.attr}" if own else n.attr)
            if isinstance(n.value, ast.Name) and n.value.id == "bootstrap":
                factories.add(n.attr)
        elif isinstance(n, ast.Name):
            names.add(n.id)
    return names, factories


def _constructor(
    node: ast.FunctionDef | ast.AsyncFunctionDef, prefix: str, rel: str, boto: bool, index: dict[str, list[_Def]]
) -> tuple[set[str], set[str]]:
    """What `__init__` itself reaches; each `self.<name> = <value>` becomes a def `<name>` reaching `<value>`'s."""
    names: set[str] = set()
    factories: set[str] = set()
    for statement in node.body:
        target = statement.targets[0] if isinstance(statement, ast.Assign) and len(statement.targets) == 1 else None
        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
            assert isinstance(statement, ast.Assign)
            value_names, value_factories = _referenced(statement.value, prefix.rstrip("."))
            index.setdefault(target.attr, []).append(
                _Def(rel, f"{prefix}{target.attr}", value_names, value_factories, boto)
            )
            continue
        more, more_factories = _referenced(statement, prefix.rstrip("."))
        names |= more
        factories |= more_factories
    return names, factories


BASES: dict[str, set[str]] = {}  # class -> the names of its bases, for every class under chat4all


@functools.cache
def _index() -> dict[str, list[_Def]]:
    """Every function and method under chat4all (bootstrap's factories are followed by bootstrap_graph) by name."""
    index: dict[str, list[_Def]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == BOOTSTRAP:
            continue
        module = _parse(path)
        boto = any(
            (isinstance(n, ast.Import | ast.ImportFrom) and any(a.name.split(".")[0] == "boto3" for a in n.names))
            or (isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "boto3")
            for n in ast.walk(module)
        )
        rel = str(path.relative_to(PACKAGE.parent))

        def visit(node: ast.AST, prefix: str, rel: str = rel, boto: bool = boto) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    names, factories = _referenced(child, prefix.rstrip("."))
                    qualname = f"{prefix}{child.name}"
                    if child.name == "__init__":
                        names, factories = _constructor(child, prefix, rel, boto, index)
                    index.setdefault(child.name, []).append(_Def(rel, qualname, names, factories, boto))
                    visit(child, qualname + ".")
                elif isinstance(child, ast.ClassDef):
                    BASES[child.name] = {b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in child.bases}
                    visit(child, f"{prefix}{child.name}.")

        visit(module, "")
    return index


@dataclass
class FunctionCode:
    """What one function's code reaches."""

    names: set[str]  # the qualnames of the defs reached
    factories: set[str]  # bootstrap factories reached
    modules: set[str]  # modules of the defs reached
    boto3_modules: set[str]


# a def followed only once one of the names is reached otherwise (6.)
GATED = {"EventBuffer.flush": {"collect", "publish", "publish_many"}}


def reached(app: Path, index: dict[str, list[_Def]], graph: Bootstrap) -> FunctionCode:
    names, factories = _referenced(_parse(app))
    todo = set(names)
    seen: set[str] = set()
    modules: set[str] = set()
    boto: set[str] = set()
    closure: set[str] = set()
    held: list[_Def] = []
    qualnames: set[str] = set()
    while todo:
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            for definition in _resolve(name, index):
                qualnames.add(definition.qualname)
                if definition.qualname in GATED and not GATED[definition.qualname] & {
                    n.rsplit(":", 1)[-1] for n in seen
                }:
                    held.append(definition)
                    continue
                modules.add(definition.module)
                if definition.imports_boto3:
                    boto.add(definition.module)
                todo |= definition.names - seen
                factories |= definition.bootstrap
            # the factories reached, and the __init__ of what they construct
            for factory in sorted(factories - closure):
                if factory not in graph.calls:
                    continue
                closure.add(factory)
                factories |= graph.calls[factory]
                todo |= graph.names[factory] - seen
                for cls in graph.classes[factory]:
                    todo |= {d.qualname for d in index.get("__init__", []) if d.qualname == f"{cls}.__init__"}
                    todo |= {n for d in index.get("__init__", []) if d.qualname == f"{cls}.__init__" for n in d.names}
        for definition in [d for d in held if GATED[d.qualname] & {n.rsplit(":", 1)[-1] for n in seen}]:
            held.remove(definition)
            qualnames.add(definition.qualname)
            modules.add(definition.module)
            todo |= definition.names - seen
    return FunctionCode(qualnames, closure, modules, boto)


def _subclasses(cls: str) -> set[str]:
    found = {cls}
    while more := {c for c, bases in BASES.items() if bases & found and c not in found}:
        found |= more
    return found


def _resolve(name: str, index: dict[str, list[_Def]]) -> list[_Def]:
    """The defs a name reaches: `self:C:x` those of C and its subclasses when C has an `x`, else every `x`."""
    if not name.startswith("self:"):
        return index.get(name, [])
    _, cls, attr = name.split(":", 2)
    classes = _subclasses(cls)
    own = [d for d in index.get(attr, []) if d.qualname.rsplit(".", 2)[-2:-1] and d.qualname.split(".")[-2] in classes]
    return own or index.get(attr, [])


# ------------------------------------------------------------------------------------------ template


def template_names(value: Any) -> frozenset[str]:
    """The resources and parameters a template value refers to (Ref, Fn::GetAtt, Fn::Sub, both Fn::If branches),
    pseudo parameters and Fn::Sub's own variables left out."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        if not isinstance(node, dict):
            return
        if isinstance(node.get("Ref"), str):
            found.add(node["Ref"])
        elif isinstance(node.get("Fn::GetAtt"), list):
            found.add(node["Fn::GetAtt"][0])
        elif "Fn::Sub" in node:
            sub = node["Fn::Sub"]
            text, variables = (sub[0], sub[1]) if isinstance(sub, list) else (sub, {})
            found.update(v for v in _sub_names(text) if v not in variables)
            walk(list(variables.values()))
        elif "Fn::If" in node:
            walk(node["Fn::If"][1:])
        else:
            walk(list(node.values()))

    walk(value)
    return frozenset(name for name in found if not name.startswith("AWS::"))


def _sub_names(text: str) -> set[str]:
    names = set()
    for part in text.split("${")[1:]:
        name = part.split("}", 1)[0]
        if not name.startswith("!"):
            names.add(name.split(".", 1)[0])
    return names


def granted(cfn: dict[str, Any], function: str) -> tuple[list[Grant], list[str]]:
    """The function role's inline grants (one per action and resource) and its managed policies."""
    role_ref = cfn["Resources"][function]["Properties"]["Role"]
    role = cfn["Resources"][role_ref["Fn::GetAtt"][0]]["Properties"]
    grants: list[Grant] = []
    for policy in role.get("Policies", []):
        for statement in policy["PolicyDocument"]["Statement"]:
            assert statement.get("Effect", "Allow") == "Allow", statement
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            grants += [(action, template_names(resource)) for action in actions for resource in resources]
    managed = [p if isinstance(p, str) else p.get("Fn::Sub", str(p)) for p in role.get("ManagedPolicyArns", [])]
    return grants, managed


def required(template: dict[str, Any]) -> dict[str, set[Grant]]:
    """function logical id -> the (action, resource) pairs its code can call, derived as the module says."""
    from chat4all.config import SECRET_VARIABLES

    cfn = cloudformation(template)
    operations = adapter_operations()
    graph = bootstrap_graph(set(operations))
    index = _index()
    result: dict[str, set[Grant]] = {}
    for logical_id, resource in template["Resources"].items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        app = ROOT / resource["Properties"]["CodeUri"] / "app.py"
        code = reached(app, index, graph)
        if code.boto3_modules:
            raise AssertionError(f"{logical_id} reaches boto3 ({code.boto3_modules}): its calls are not derived")
        variables = cfn["Resources"][logical_id]["Properties"]["Environment"]["Variables"]
        queues = {
            frozenset({props["EventSourceArn"]["Fn::GetAtt"][0]})
            for res in cfn["Resources"].values()
            if res["Type"] == "AWS::Lambda::EventSourceMapping"
            and (props := res["Properties"])["FunctionName"] == {"Ref": logical_id}
        }
        needs: set[Grant] = {(action, queue) for queue in queues for action in EVENT_SOURCE_ACTIONS}
        needs |= {
            ("secretsmanager:GetSecretValue", template_names(variables[variable]))
            for variable in SECRET_VARIABLES.values()
            if variable in variables
        }
        for factory in code.factories:
            for built in graph.built.get(factory, []):
                for method, ops in operations[built.adapter].items():
                    if method != "__init__" and f"{built.adapter}.{method}" not in code.names:
                        continue
                    if built.adapter in EVENT_QUEUE_ADAPTERS:
                        targets = queues
                    else:
                        assert built.variable is not None, built
                        targets = {template_names(variables[built.variable])}
                    prefix = IAM_PREFIX[built.service]
                    actions = {S3_ACTIONS.get(op, op) if prefix == "s3" else op for op in ops}
                    needs |= {(f"{prefix}:{action}", t) for action in actions for t in targets}
        result[logical_id] = needs
    return result


def compare(needs: set[Grant], grants: list[Grant]) -> tuple[set[Grant], set[Grant]]:
    """(what the code calls that no grant allows, grants that allow nothing the code calls)."""

    def allows(pattern: str, action: str) -> bool:
        return fnmatch.fnmatchcase(action.lower(), pattern.lower())

    missing = {(a, r) for a, r in needs if not any(allows(p, a) and r == g for p, g in grants)}
    unused = {(p, g) for p, g in grants if not any(allows(p, a) and r == g for a, r in needs)}
    return missing, unused

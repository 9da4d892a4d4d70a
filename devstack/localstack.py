"""LocalStack on the host (its own venv, no Docker) and the template's infrastructure deployed to it."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from devstack.processes import ManagedProcess, ProcessFailedError, start_until_ready
from devstack.template import (
    SERVERLESS_FUNCTION,
    SUB_VARIABLE,
    attribute_references,
    infrastructure_template,
    load_template,
    sub_references,
)

if TYPE_CHECKING:
    import re
    from collections.abc import Callable, Iterator

    from devstack.processes import ProcessGroup

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_DIR_NAME = ".localstack-venv"
REQUIREMENTS = Path("localstack") / "requirements.txt"
PREFERRED_PORT = 4566
REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
# What the functions use (sqs, events, kms), what CloudFormation needs (s3, sts) and a few it may touch. Not
# secretsmanager or ssm: they pull in the lambda service, which looks for Docker and slows the start by seconds.
SERVICES = ("sqs", "events", "kms", "cloudformation", "s3", "sts", "iam", "logs", "cloudwatch")
# what the venv must be able to import for `python -m localstack.runtime.main` to serve
RUNTIME_IMPORTS = "import localstack.runtime.main, moto, rolo, hypercorn, twisted"
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]
# Attributes read back for every resource of these types, besides those the template itself uses.
KNOWN_ATTRIBUTES = {
    "AWS::SQS::Queue": ("Arn", "QueueName", "QueueUrl"),
    "AWS::Events::EventBus": ("Arn", "Name"),
    "AWS::Events::Rule": ("Arn",),
    "AWS::KMS::Key": ("Arn", "KeyId"),
}
ATTRIBUTE_OUTPUT_PREFIX = "DevstackAttr"
# LocalStack's tags for a KMS key's id and material (localstack.services.kms.utils)
PINNED_KEY_TAGS = ("_custom_id_", "_custom_key_material_")
KMS_KEYS_FILE = "kms-keys.json"
# a stack in one of these can only be deleted
UNUSABLE_STATUSES = ("ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "CREATE_FAILED", "DELETE_FAILED")
PSEUDO_PARAMETERS = {"AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com"}


class StackDeployError(RuntimeError):
    """CloudFormation in LocalStack did not bring the stack to a complete state."""


# ------------------------------------------------------------------------------------------ venv


def find_python313() -> str:
    """pyenv's 3.13.0 if there is one, else python3.13 on PATH (as the Makefile picks it)."""
    pyenv = shutil.which("pyenv")
    if pyenv:
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False).stdout.strip()
        candidate = Path(root) / "versions" / "3.13.0" / "bin" / "python3.13"
        if root and candidate.is_file():
            return str(candidate)
    found = shutil.which("python3.13")
    if found:
        return found
    if sys.version_info[:2] == (3, 13):
        return sys.executable
    raise ProcessFailedError("Python 3.13 is needed for LocalStack's venv (pyenv 3.13.0 or python3.13 on PATH)")


def _imports_work(python: Path, group: ProcessGroup) -> bool:
    if not python.is_file():
        return False
    # cwd away from the repo: its localstack/ folder would shadow the package
    returncode, _ = group.run([str(python), "-c", RUNTIME_IMPORTS], cwd="/")
    return returncode == 0


def ensure_localstack_venv(repo_root: Path, group: ProcessGroup) -> Path:
    """Create <repo>/.localstack-venv and install localstack/requirements.txt unless already done; its python."""
    venv = repo_root / VENV_DIR_NAME
    python = venv / "bin" / "python"
    requirements = repo_root / REQUIREMENTS
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    stamp = venv / ".requirements.sha256"
    installed = stamp.read_text().strip() if stamp.is_file() else ""
    if installed == digest and _imports_work(python, group):
        return python
    if not python.is_file():
        returncode, output = group.run([find_python313(), "-m", "venv", str(venv)])
        if returncode != 0:
            raise ProcessFailedError(f"could not create {venv}:\n{output}")
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(requirements)]
    returncode, output = group.run(pip, cwd="/")
    if returncode != 0 or not _imports_work(python, group):
        tail = "\n".join(output.splitlines()[-20:])
        raise ProcessFailedError(f"could not install LocalStack into {venv}:\n{tail}")
    stamp.write_text(digest + "\n")
    return python


# ------------------------------------------------------------------------------------------ server


def localstack_env(port: int, filesystem_root: Path) -> dict[str, str]:
    """The environment LocalStack runs with: host mode, loopback only, nothing downloaded, nothing persisted."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(
        {
            "GATEWAY_LISTEN": f"127.0.0.1:{port}",
            # the host:port put in URLs it hands out (queue URLs), reachable without DNS
            "LOCALSTACK_HOST": f"127.0.0.1:{port}",
            "SQS_ENDPOINT_STRATEGY": "path",
            "DNS_ADDRESS": "0",  # no DNS server (it would want port 53)
            "SERVICES": ",".join(SERVICES),
            "EAGER_SERVICE_LOADING": "1",
            "PERSISTENCE": "0",
            # this machine looks like a container to LocalStack, which would then use /var/lib/localstack
            "OVERRIDE_IN_DOCKER": "0",
            "FILESYSTEM_ROOT": str(filesystem_root),
            "SKIP_SSL_CERT_DOWNLOAD": "1",
            "DISABLE_EVENTS": "1",
            # LocalStack's SQS reports CloudWatch metrics by calling its own API from a thread for every send,
            # receive and delete (29% of its py-spy samples under load; its CPU per call 5.5 -> ~1.9 ms
            # without), for metrics nothing here reads
            "SQS_DISABLE_CLOUDWATCH_METRICS": "1",
            "AWS_DEFAULT_REGION": REGION,
        }
    )
    return env


def start_localstack(state_dir: Path, group: ProcessGroup) -> tuple[str, ManagedProcess]:
    """Start LocalStack from its venv on 127.0.0.1 (4566 if free); return its endpoint URL and process."""
    python = REPO_ROOT / VENV_DIR_NAME / "bin" / "python"
    if not python.is_file():
        raise ProcessFailedError(f"{python} is missing; ensure_localstack_venv() builds it")
    home = state_dir / "localstack"
    home.mkdir(parents=True, exist_ok=True)
    port = group.port_for(PREFERRED_PORT)
    process = ManagedProcess(
        "localstack",
        [str(python), "-m", "localstack.runtime.main"],
        env=localstack_env(port, home / "filesystem"),
        cwd=home,  # never the repo root: its localstack/ folder would shadow the package
        log_path=state_dir / "logs" / "localstack.log",
    )
    url = f"http://127.0.0.1:{port}"
    start_until_ready(process, lambda: _check_ready(url), timeout=120.0, interval=0.25, group=group, port=port)
    return url, process


def _check_ready(url: str) -> None:
    """Raise until every service is available and LocalStack's READY stage has completed."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    with opener.open(f"{url}/_localstack/health", timeout=2) as response:
        status = json.load(response).get("services", {})
    # the READY stage ("Ready." in the log): services listed as available may still be loading before it
    with opener.open(f"{url}/_localstack/init/ready", timeout=2) as response:
        ready = bool(json.load(response).get("completed"))
    missing = [name for name in SERVICES if status.get(name) not in ("available", "running")]
    if not ready or missing:
        raise ProcessFailedError(f"not ready yet (init completed: {ready}; services not available: {missing})")


# ------------------------------------------------------------------------------------------ stack


@dataclass
class StackInfo:
    """A deployed stack, and the values the template's intrinsics take in it."""

    stack_name: str
    region: str
    account_id: str
    parameters: dict[str, str]
    physical_ids: dict[str, str]
    outputs: dict[str, str]
    attributes: dict[tuple[str, str], str] = field(default_factory=dict)
    resource_types: dict[str, str] = field(default_factory=dict)

    def ref(self, name: str) -> str:
        pseudo = {"AWS::StackName": self.stack_name, "AWS::Region": self.region, "AWS::AccountId": self.account_id}
        pseudo |= PSEUDO_PARAMETERS
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.physical_ids:
            return self.physical_ids[name]
        if self.resource_types.get(name) == SERVERLESS_FUNCTION:
            return name  # the local runner names each function by its logical id
        raise KeyError(f"Ref {name}: not a parameter with a value nor a deployed resource of {self.stack_name}")

    def get_att(self, logical_id: str, attribute: str) -> str:
        if (logical_id, attribute) in self.attributes:
            return self.attributes[(logical_id, attribute)]
        if self.resource_types.get(logical_id) == SERVERLESS_FUNCTION and attribute == "Arn":
            return f"arn:aws:lambda:{self.region}:{self.account_id}:function:{logical_id}"
        raise KeyError(f"Fn::GetAtt {logical_id}.{attribute}: not read back from stack {self.stack_name}")

    def resolve(self, value: Any) -> str:
        """A template value with Ref, Fn::GetAtt, Fn::Sub (and Join, Select, Split, Base64) as a string."""
        result = self._evaluate(value)
        if isinstance(result, list):
            raise ValueError(f"{value!r} is a list, not a string")
        return _plain(result)

    def _evaluate(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self._evaluate(item) for item in value]
        if not isinstance(value, dict):
            return value
        intrinsics: dict[str, Callable[[Any], Any]] = {
            "Ref": self.ref,
            "Fn::GetAtt": self._get_att,
            "Fn::Sub": self._sub,
            "Fn::Join": self._join,
            "Fn::Select": self._select,
            "Fn::Split": self._split,
            "Fn::Base64": lambda arg: base64.b64encode(_plain(self._evaluate(arg)).encode()).decode(),
        }
        key = next(iter(value)) if len(value) == 1 else None
        if key not in intrinsics:
            raise ValueError(f"cannot resolve {value!r} locally")
        return intrinsics[key](value[key])

    def _get_att(self, arg: Any) -> str:
        logical_id, attribute = arg if isinstance(arg, list) else str(arg).split(".", 1)
        return self.get_att(logical_id, _plain(self._evaluate(attribute)))

    def _join(self, arg: Any) -> str:
        separator, items = arg
        return str(separator).join(_plain(item) for item in self._evaluate_list(items))

    def _select(self, arg: Any) -> Any:
        index, items = arg
        return self._evaluate_list(items)[int(self._evaluate(index))]

    def _split(self, arg: Any) -> list[str]:
        separator, text = arg
        return _plain(self._evaluate(text)).split(separator)

    def _evaluate_list(self, value: Any) -> list[Any]:
        result = self._evaluate(value)
        if not isinstance(result, list):
            raise ValueError(f"{value!r} is not a list")
        return result

    def _sub(self, arg: Any) -> str:
        text, variables = (arg[0], arg[1]) if isinstance(arg, list) else (arg, {})
        local = {name: _plain(self._evaluate(v)) for name, v in variables.items()}
        replacements: dict[str, str] = {}
        for name, attribute in sub_references(text, frozenset(local)):
            expression = f"{name}.{attribute}" if attribute else name
            replacements[expression] = self.get_att(name, attribute) if attribute else self.ref(name)
        replacements |= local

        def substitute(match: re.Match[str]) -> str:
            expression = match.group(1).strip()
            if expression.startswith("!"):
                return "${" + expression[1:] + "}"
            return replacements[expression]

        return SUB_VARIABLE.sub(substitute, text)


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _attribute_outputs(template: dict[str, Any], infra: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Output name -> (logical id, attribute) for every attribute the template uses of a deployed resource."""
    kept = infra["Resources"]
    wanted = {(lid, attr) for lid, attr in attribute_references(template) if lid in kept}
    for lid, resource in kept.items():
        wanted |= {(lid, attr) for attr in KNOWN_ATTRIBUTES.get(resource.get("Type", ""), ())}
    taken = set(infra.get("Outputs", {}))
    names: dict[str, tuple[str, str]] = {}
    for lid, attr in sorted(wanted):
        base = ATTRIBUTE_OUTPUT_PREFIX + "".join(ch for ch in f"{lid}{attr}" if ch.isalnum())
        name, counter = base, 1
        while name in taken or name in names:
            counter += 1
            name = f"{base}{counter}"
        names[name] = (lid, attr)
    return names


def _cloudformation(endpoint_url: str) -> Any:
    config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=60)
    return boto3.client(
        "cloudformation",
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=CREDENTIALS["aws_access_key_id"],
        aws_secret_access_key=CREDENTIALS["aws_secret_access_key"],
        config=config,
    )


def _stack_status(cfn: Any, stack_name: str) -> str | None:
    try:
        stacks = cfn.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        if "does not exist" in str(exc):
            return None
        raise
    return str(stacks[0]["StackStatus"]) if stacks else None


def _wait(cfn: Any, stack_name: str, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while True:
        status = _stack_status(cfn, stack_name)
        if status is None or not status.endswith("_IN_PROGRESS"):
            return status
        if time.monotonic() > deadline:
            raise StackDeployError(f"stack {stack_name} still {status} after {timeout:.0f}s")
        time.sleep(0.25)


def _event_ids(cfn: Any, stack_name: str) -> set[str]:
    if _stack_status(cfn, stack_name) is None:
        return set()
    return {event["EventId"] for event in _events(cfn, stack_name)}


def _events(cfn: Any, stack_name: str) -> Iterator[dict[str, Any]]:
    for page in cfn.get_paginator("describe_stack_events").paginate(StackName=stack_name):
        yield from page["StackEvents"]


def _failures(cfn: Any, stack_name: str, seen: set[str]) -> list[str]:
    """The failed resource events of the last operation, oldest first."""
    return [
        f"  {event['LogicalResourceId']} ({event.get('ResourceType', '?')}) {event['ResourceStatus']}: "
        f"{event.get('ResourceStatusReason') or 'no reason given'}"
        for event in reversed(list(_events(cfn, stack_name)))
        if event["EventId"] not in seen
        and event["ResourceStatus"].endswith("_FAILED")
        and event["LogicalResourceId"] != stack_name
    ]


def _missing_resources(cfn: Any, stack_name: str, infra: dict[str, Any]) -> list[str]:
    resources = cfn.describe_stack_resources(StackName=stack_name)["StackResources"]
    present = {r["LogicalResourceId"] for r in resources if not r["ResourceStatus"].startswith("DELETE")}
    return sorted(set(infra["Resources"]) - present)


def pin_kms_keys(infra: dict[str, Any], stack_name: str, keys_file: Path) -> None:
    """Give every KMS key of the stack the same id and key material in every run, kept in `keys_file`.

    LocalStack keeps nothing across a restart, while PostgreSQL keeps the channel credentials it encrypted:
    with a new key they would never decrypt again. LocalStack creates a key with a given id and material when
    asked through the tags `_custom_id_` and `_custom_key_material_`; AWS itself needs none of this.
    """
    keys = [lid for lid, res in infra["Resources"].items() if res.get("Type") == "AWS::KMS::Key"]
    if not keys:
        return
    stored: dict[str, dict[str, str]] = json.loads(keys_file.read_text()) if keys_file.is_file() else {}
    changed = False
    for logical_id in keys:
        name = f"{stack_name}/{logical_id}"
        if name not in stored:
            material = base64.b64encode(os.urandom(32)).decode()
            stored[name] = {"key_id": str(uuid.uuid4()), "key_material": material}
            changed = True
        properties = infra["Resources"][logical_id].setdefault("Properties", {})
        tags = [tag for tag in properties.get("Tags", []) if tag.get("Key") not in PINNED_KEY_TAGS]
        properties["Tags"] = [
            *tags,
            {"Key": PINNED_KEY_TAGS[0], "Value": stored[name]["key_id"]},
            {"Key": PINNED_KEY_TAGS[1], "Value": stored[name]["key_material"]},
        ]
    if changed:
        keys_file.parent.mkdir(parents=True, exist_ok=True)
        scratch = keys_file.with_suffix(".tmp")
        scratch.touch(mode=0o600)
        scratch.write_text(json.dumps(stored, indent=2) + "\n")
        scratch.replace(keys_file)


def deploy_stack(
    endpoint_url: str,
    template_path: Path,
    stack_name: str,
    parameters: dict[str, str],
    *,
    state_dir: Path,
    timeout: float = 300.0,
) -> StackInfo:
    """Create or update the stack of the template's infrastructure in LocalStack; what it resolves to.

    Whatever must outlive LocalStack itself (the KMS keys) is kept in `state_dir`.
    """
    template = load_template(template_path)
    infra = infrastructure_template(template)
    pin_kms_keys(infra, stack_name, state_dir / KMS_KEYS_FILE)
    attribute_outputs = _attribute_outputs(template, infra)
    infra.setdefault("Outputs", {}).update(
        {name: {"Value": {"Fn::GetAtt": [lid, attr]}} for name, (lid, attr) in attribute_outputs.items()}
    )
    declared: dict[str, Any] = template.get("Parameters", {})
    values = {name: str(spec["Default"]) for name, spec in declared.items() if "Default" in spec}
    values |= {name: value for name, value in parameters.items() if name in declared}
    needed = infra.get("Parameters", {})
    missing = sorted(set(needed) - set(values))
    if missing:
        raise ValueError(f"{template_path}: parameters without a value: {', '.join(missing)}")
    request: dict[str, Any] = {
        "StackName": stack_name,
        "TemplateBody": json.dumps(infra),
        "Parameters": [{"ParameterKey": name, "ParameterValue": values[name]} for name in needed],
        "Capabilities": CAPABILITIES,
    }
    cfn = _cloudformation(endpoint_url)
    report: list[str] = []
    for attempt in range(2):
        status = _wait(cfn, stack_name, timeout)
        if status in UNUSABLE_STATUSES or (attempt and status is not None):
            cfn.delete_stack(StackName=stack_name)
            status = _wait(cfn, stack_name, timeout)
        seen = _event_ids(cfn, stack_name)
        done = {"CREATE_COMPLETE", "UPDATE_COMPLETE"}
        if status in (None, "DELETE_COMPLETE"):
            cfn.create_stack(**request)
        else:
            try:
                cfn.update_stack(**request)
            except ClientError as exc:
                if "No updates are to be performed" not in str(exc):
                    raise
                done.add(str(status))  # the stack already is what the template says, whatever came before
        status = _wait(cfn, stack_name, timeout)
        # LocalStack can end a failed update UPDATE_COMPLETE, with the failed resource rolled back to nothing;
        # so the resource events and the resources present are checked too, not only the stack's status
        failures = _failures(cfn, stack_name, seen) if status is not None else []
        missing = _missing_resources(cfn, stack_name, infra) if status in done else []
        if status in done and not failures and not missing:
            return _stack_info(cfn, stack_name, values, attribute_outputs, template)
        report = [f"stack {stack_name} ended {status}", *failures]
        if missing:
            report.append(f"  resources missing from the stack: {', '.join(missing)}")
        if failures or status not in done:
            break
        # only resources gone (left so by an earlier failed update, which LocalStack won't redo): start afresh
    raise StackDeployError("\n".join(report))


def _stack_info(
    cfn: Any,
    stack_name: str,
    parameters: dict[str, str],
    attribute_outputs: dict[str, tuple[str, str]],
    template: dict[str, Any],
) -> StackInfo:
    stack = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
    all_outputs = {o["OutputKey"]: str(o.get("OutputValue", "")) for o in stack.get("Outputs", [])}
    resources = cfn.describe_stack_resources(StackName=stack_name)["StackResources"]
    return StackInfo(
        stack_name=stack_name,
        region=REGION,
        account_id=str(stack["StackId"]).split(":")[4],
        parameters=parameters,
        physical_ids={r["LogicalResourceId"]: r["PhysicalResourceId"] for r in resources},
        outputs={k: v for k, v in all_outputs.items() if k not in attribute_outputs},
        attributes={ref: all_outputs[name] for name, ref in attribute_outputs.items() if name in all_outputs},
        resource_types={lid: str(res.get("Type", "")) for lid, res in template["Resources"].items()},
    )

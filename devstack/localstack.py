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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from devstack.processes import ManagedProcess, ProcessFailedError, start_until_ready
from devstack.template import (
    cloudformation,
    functions,
    infrastructure_template,
    load_template,
    plain,
    queue_subscriptions,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

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
# outputs added to the stack, one for each value the local runtime needs CloudFormation to evaluate
VALUE_OUTPUT_PREFIX = "DevstackValue"
# LocalStack's tags for a KMS key's id and material (localstack.services.kms.utils)
PINNED_KEY_TAGS = ("_custom_id_", "_custom_key_material_")
KMS_KEYS_FILE = "kms-keys.json"
# a stack in one of these can only be deleted
UNUSABLE_STATUSES = ("ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "CREATE_FAILED", "DELETE_FAILED")


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
            # receive and delete, for metrics nothing here reads (what that costs it: docs/BENCHMARKS.md,
            # "LocalStack and the local runtime")
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
    parameters: dict[str, str]
    physical_ids: dict[str, str]
    values: dict[str, str]  # an intrinsic (as value_key gives it) -> its value, read back through an output

    def resolve(self, value: Any) -> str:
        """A template value: a parameter's or a resource's Ref, or an intrinsic deploy_stack read back."""
        if not isinstance(value, dict):
            return plain(value)
        ref = value.get("Ref")
        for known in (self.parameters, self.physical_ids):
            if ref in known:
                return known[ref]
        if value_key(value) in self.values:
            return self.values[value_key(value)]
        raise KeyError(f"{value!r}: not a value of stack {self.stack_name}")


def value_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _wanted_values(cfn: dict[str, Any], infra: dict[str, Any]) -> list[Any]:
    """What the local runtime needs CloudFormation to evaluate: the functions' variables, the queues' ARNs."""
    simple = set(infra.get("Parameters", {})) | set(infra["Resources"])
    wanted = {
        value_key(value): value
        for config in functions(cfn).values()
        for value in config.environment.values()
        if isinstance(value, dict) and value.get("Ref") not in simple
    }
    for subscription in queue_subscriptions(cfn):
        arn = {"Fn::GetAtt": [subscription.queue_logical_id, "Arn"]}
        wanted[value_key(arn)] = arn
    return [wanted[key] for key in sorted(wanted)]


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
    cfn = cloudformation(load_template(template_path))
    infra = infrastructure_template(cfn)
    pin_kms_keys(infra, stack_name, state_dir / KMS_KEYS_FILE)
    wanted = _wanted_values(cfn, infra)
    infra["Outputs"] |= {f"{VALUE_OUTPUT_PREFIX}{n}": {"Value": value} for n, value in enumerate(wanted)}
    declared: dict[str, Any] = infra.get("Parameters", {})
    values = {name: plain(spec["Default"]) for name, spec in declared.items() if "Default" in spec}
    values |= {name: value for name, value in parameters.items() if name in declared}
    missing = sorted(set(declared) - set(values))
    if missing:
        raise ValueError(f"{template_path}: parameters without a value: {', '.join(missing)}")
    request: dict[str, Any] = {
        "StackName": stack_name,
        "TemplateBody": json.dumps(infra),
        "Parameters": [{"ParameterKey": name, "ParameterValue": value} for name, value in values.items()],
        "Capabilities": CAPABILITIES,
    }
    client = _cloudformation(endpoint_url)
    report: list[str] = []
    for attempt in range(2):
        status = _wait(client, stack_name, timeout)
        if status in UNUSABLE_STATUSES or (attempt and status is not None):
            client.delete_stack(StackName=stack_name)
            status = _wait(client, stack_name, timeout)
        seen = _event_ids(client, stack_name)
        done = {"CREATE_COMPLETE", "UPDATE_COMPLETE"}
        if status in (None, "DELETE_COMPLETE"):
            client.create_stack(**request)
        else:
            try:
                client.update_stack(**request)
            except ClientError as exc:
                if "No updates are to be performed" not in str(exc):
                    raise
                done.add(str(status))  # the stack already is what the template says, whatever came before
        status = _wait(client, stack_name, timeout)
        # LocalStack can end a failed update UPDATE_COMPLETE, with the failed resource rolled back to nothing;
        # so the resource events and the resources present are checked too, not only the stack's status
        failures = _failures(client, stack_name, seen) if status is not None else []
        missing = _missing_resources(client, stack_name, infra) if status in done else []
        if status in done and not failures and not missing:
            stack = client.describe_stacks(StackName=stack_name)["Stacks"][0]
            outputs = {o["OutputKey"]: str(o.get("OutputValue", "")) for o in stack.get("Outputs", [])}
            resources = client.describe_stack_resources(StackName=stack_name)["StackResources"]
            return StackInfo(
                stack_name=stack_name,
                parameters=values,
                physical_ids={r["LogicalResourceId"]: r["PhysicalResourceId"] for r in resources},
                values={value_key(v): outputs[f"{VALUE_OUTPUT_PREFIX}{n}"] for n, v in enumerate(wanted)},
            )
        report = [f"stack {stack_name} ended {status}", *failures]
        if missing:
            report.append(f"  resources missing from the stack: {', '.join(missing)}")
        if failures or status not in done:
            break
        # only resources gone (left so by an earlier failed update, which LocalStack won't redo): start afresh
    raise StackDeployError("\n".join(report))

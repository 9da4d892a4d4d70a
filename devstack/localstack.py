"""LocalStack on the host (its own venv, no Docker) and the template's infrastructure deployed to it."""

from __future__ import annotations

import base64
import hashlib
import json
import os
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
from devstack.template import cloudformation, evaluate_conditions, infrastructure_template, load_template, plain

if TYPE_CHECKING:
    from devstack.processes import ProcessGroup

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_DIR_NAME = ".localstack-venv"
REQUIREMENTS = Path("localstack") / "requirements.txt"
PREFERRED_PORT = 4566
REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
# What the functions use (sqs, events, kms, secretsmanager: their connection settings are secrets, read at cold
# start as in AWS), what CloudFormation needs (s3, sts) and a few it may touch. Not ssm: it pulls in the lambda
# service, which looks for Docker. secretsmanager costs the start about 3 s (5.0 s to 7.8 s, measured).
SERVICES = ("sqs", "events", "kms", "secretsmanager", "cloudformation", "s3", "sts", "iam", "logs", "cloudwatch")
# what the venv must be able to import for `python -m localstack.runtime.main` to serve
RUNTIME_IMPORTS = "import localstack.runtime.main, moto, rolo, hypercorn, twisted"
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]
# LocalStack's tags for a KMS key's id and material (localstack.services.kms.utils)
PINNED_KEY_TAGS = ("_custom_id_", "_custom_key_material_")
KMS_KEYS_FILE = "kms-keys.json"
# a stack in one of these can only be deleted
UNUSABLE_STATUSES = ("ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "CREATE_FAILED", "DELETE_FAILED")


class StackDeployError(RuntimeError):
    """CloudFormation in LocalStack did not bring the stack to a complete state."""


# ------------------------------------------------------------------------------------------ venv


def ensure_localstack_venv(repo_root: Path, group: ProcessGroup) -> Path:
    """Create <repo>/.localstack-venv and install localstack/requirements.txt unless already done; its python.

    The venv is made by this interpreter's Python 3.13 (`python -m venv` in a venv uses its base interpreter);
    the stamp is written only once the install imports, so a matching stamp means a working venv.
    """
    venv = repo_root / VENV_DIR_NAME
    python = venv / "bin" / "python"
    requirements = repo_root / REQUIREMENTS
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    stamp = venv / ".requirements.sha256"
    if python.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        return python
    # cwd away from the repo: its localstack/ folder would shadow the package
    for argv in (
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(requirements)],
        [str(python), "-c", RUNTIME_IMPORTS],
    ):
        returncode, output = group.run(argv, cwd="/")
        if returncode != 0:
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
            # presigned S3 URLs (files) are checked as AWS checks them: a tampered or expired one is refused
            "S3_SKIP_SIGNATURE_VALIDATION": "0",
        }
    )
    return env


def start_localstack(state_dir: Path, group: ProcessGroup, port: int | None = None) -> tuple[str, ManagedProcess]:
    """Start LocalStack from its venv (built first if need be) on 127.0.0.1 (`port`, else 4566 if free); return
    its endpoint URL and process."""
    python = ensure_localstack_venv(REPO_ROOT, group)
    home = state_dir / "localstack"
    home.mkdir(parents=True, exist_ok=True)
    port = port or group.port_for(PREFERRED_PORT)
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
    """A deployed stack: what a `Ref` to one of its parameters or resources is (all the functions' variables use)."""

    stack_name: str
    refs: dict[str, str]
    conditions: dict[str, bool] = field(default_factory=dict)

    def resolve(self, value: Any) -> str:
        if not isinstance(value, dict):
            return plain(value)
        if value.get("Ref") in self.refs:
            return self.refs[value["Ref"]]
        # a value that depends on a Condition (the secrets' ARNs, the RDS Proxy endpoint): the branch it takes here
        if isinstance(value.get("Fn::If"), list) and value["Fn::If"][0] in self.conditions:
            name, when_true, when_false = value["Fn::If"]
            return self.resolve(when_true if self.conditions[name] else when_false)
        raise KeyError(f"{value!r}: not a Ref to a parameter or resource of stack {self.stack_name}")


def _cloudformation(endpoint_url: str) -> Any:
    config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=60)
    keys = CREDENTIALS
    return boto3.client(
        "cloudformation", endpoint_url=endpoint_url, region_name=REGION, config=config,
        aws_access_key_id=keys["aws_access_key_id"], aws_secret_access_key=keys["aws_secret_access_key"],
    )  # fmt: skip


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
    while (status := _stack_status(cfn, stack_name)) is not None and status.endswith("_IN_PROGRESS"):
        if time.monotonic() > deadline:
            raise StackDeployError(f"stack {stack_name} still {status} after {timeout:.0f}s")
        time.sleep(0.25)
    return status


def _events(cfn: Any, stack_name: str) -> list[dict[str, Any]]:
    """The stack's events, newest first (none for a stack that does not exist)."""
    if _stack_status(cfn, stack_name) is None:
        return []
    pages = cfn.get_paginator("describe_stack_events").paginate(StackName=stack_name)
    return [event for page in pages for event in page["StackEvents"]]


def _failures(cfn: Any, stack_name: str, seen: set[str]) -> list[str]:
    """The failed resource events of the last operation, oldest first."""
    return [
        f"  {event['LogicalResourceId']} ({event.get('ResourceType', '?')}) {event['ResourceStatus']}: "
        f"{event.get('ResourceStatusReason') or 'no reason given'}"
        for event in reversed(_events(cfn, stack_name))
        if event["EventId"] not in seen
        and event["ResourceStatus"].endswith("_FAILED")
        and event["LogicalResourceId"] != stack_name
    ]


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
    infra = infrastructure_template(cloudformation(load_template(template_path)))
    pin_kms_keys(infra, stack_name, state_dir / KMS_KEYS_FILE)
    declared: dict[str, Any] = infra.get("Parameters", {})
    values = {name: plain(spec["Default"]) for name, spec in declared.items() if "Default" in spec}
    values |= {name: value for name, value in parameters.items() if name in declared}
    if missing := sorted(set(declared) - set(values)):
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
        seen = {event["EventId"] for event in _events(client, stack_name)}
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
        resources = client.describe_stack_resources(StackName=stack_name)["StackResources"] if status in done else []
        present = {
            r["LogicalResourceId"]: r["PhysicalResourceId"]
            for r in resources
            if not r["ResourceStatus"].startswith("DELETE")
        }
        conditions = evaluate_conditions(infra, values)
        expected = {lid for lid, res in infra["Resources"].items() if conditions.get(res.get("Condition"), True)}
        missing = sorted(expected - set(present)) if status in done else []
        if status in done and not failures and not missing:
            return StackInfo(stack_name, values | present, conditions)
        report = [f"stack {stack_name} ended {status}", *failures]
        if missing:
            report.append(f"  resources missing from the stack: {', '.join(missing)}")
        if failures or status not in done:
            break
        # only resources gone (left so by an earlier failed update, which LocalStack won't redo): start afresh
    raise StackDeployError("\n".join(report))

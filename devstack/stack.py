"""The whole platform on 127.0.0.1: servers, AWS resources from template.yaml, databases, functions."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pymongo
from psycopg import sql

from devstack.localstack import deploy_stack, start_localstack
from devstack.postgres import start_postgres
from devstack.processes import (
    STATE_DIR,
    ManagedProcess,
    ProcessFailedError,
    ProcessGroup,
    StartCancelledError,
    free_port,
    require_free_port,
)
from devstack.runtime import LocalRuntime, RuntimeOptions
from devstack.servers import start_clamd, start_mongo, start_redis
from devstack.state import StateLock, wipe_state
from devstack.template import function_environment, functions, load_template

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from devstack.lambda_service import InvocationResult
    from devstack.localstack import StackInfo

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_PATH = REPO_ROOT / "template.yaml"
LOCAL_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    # no X-Ray daemon or CloudWatch agent locally: traces off, metrics still printed as EMF logs
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_DEV": "false",
}
# written while a stack runs on a state dir: where its API and queues are (devstack/ops.py reads it)
RUNNING_FILE = "running.json"
QUEUE_VARIABLES = {
    "ROUTE_QUEUE_URL": "RouteQueue",
    "ROUTE_DEAD_LETTER_QUEUE_URL": "RouteDeadLetterQueue",
    "STATUS_QUEUE_URL": "StatusQueue",
    "STATUS_DEAD_LETTER_QUEUE_URL": "StatusDeadLetterQueue",
}
# the settings the functions get as Secrets Manager ARNs (chat4all.config.SECRET_VARIABLES), never as values
SECRET_SETTINGS = ("DATABASE_URL", "MONGODB_URI", "REDIS_URL")
# run once at start (and after LocalStack restarts): every message still PENDING goes back on the new queue
SWEEPER_FUNCTION = "SweeperFunction"
START_SWEEP_TIMEOUT = 120.0
# servers interrupted while starting hold nothing worth a graceful stop; a starting LocalStack ignores SIGTERM
INTERRUPTED_START_GRACE_SECONDS = 2.0
# environment variables that become template parameters when set (channel bases and the JWT issuer)
ENV_PARAMETERS = {
    "WHATSAPP_API_BASE": "WhatsAppApiBase",
    "TELEGRAM_API_BASE": "TelegramApiBase",
    "INSTAGRAM_API_BASE": "InstagramApiBase",
    "CHAT4ALL_JWT_ISSUER": "JwtIssuer",
    "CHAT4ALL_JWT_AUDIENCE": "JwtAudience",
    "CHAT4ALL_JWT_JWKS_URL": "JwtJwksUrl",
    "CHAT4ALL_SWEEP_PENDING_AFTER_SECONDS": "SweepPendingAfterSeconds",
}


def say(line: str) -> None:
    """A line on stderr; lost, not raised, when stderr is gone (its terminal closed, its pipe's reader exited): a
    stop must still stop everything."""
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr, flush=True)


def _ensure_layers_importable() -> None:
    layers = str(REPO_ROOT / "layers")
    if layers not in sys.path:
        sys.path.insert(0, layers)


def app_role_password(owner_url: str, environ: dict[str, str]) -> str:
    """CHAT4ALL_APP_DB_PASSWORD, else one derived from the owner's URL: stable across runs and platforms
    sharing a server, and as secret as the owner's own credentials."""
    given = environ.get("CHAT4ALL_APP_DB_PASSWORD")
    if given:
        return given
    server = with_database(owner_url, "")
    return hmac.new(server.encode(), b"chat4all_app", hashlib.sha256).hexdigest()


@dataclass
class PlatformOptions:
    port: int = 3000
    state_dir: Path = STATE_DIR
    stack_name: str = "chat4all"
    admin_api_key: str | None = None
    database_name: str = "chat4all"
    create_fresh_database: bool = False
    preferred_ports: bool = True
    channel_api_bases: dict[str, str] = field(default_factory=dict)
    # variables every function gets besides the template's, as a deployment sets its own (a platform module it
    # adds: CHAT4ALL_CHANNEL_MODULES, that platform's API base, and PYTHONPATH where its code is)
    function_variables: dict[str, str] = field(default_factory=dict)
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    log: Callable[[str], None] = say


def with_database(url: str, name: str) -> str:
    """The same server URL naming another database (works for postgresql:// and mongodb:// URLs)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def postgres_database(server_url: str, name: str, *, drop: bool, create: bool) -> None:
    """Drop a database of a PostgreSQL server (when asked), and create it unless it exists."""
    identifier = sql.Identifier(name)
    with psycopg.connect(with_database(server_url, "postgres"), autocommit=True) as conn:
        if drop:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(identifier))
        if create and not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(identifier))


# each server the stack starts unless given by URL: its key in LocalPlatform.urls, the variable that points at
# the user's own, and its launcher (state dir, process group, port or None for its usual one)
SERVERS: dict[str, tuple[str, str, Callable[[Path, ProcessGroup, int | None], tuple[str, ManagedProcess]]]] = {
    "localstack": ("aws", "AWS_ENDPOINT_URL", start_localstack),
    "postgres": ("postgres_server", "DATABASE_URL", start_postgres),
    "mongo": ("mongo_server", "MONGODB_URI", start_mongo),
    "redis": ("redis", "REDIS_URL", start_redis),
    "clamd": ("clamd", "CLAMD_ADDRESS", start_clamd),
}


class LocalPlatform:
    """Starts what is not given by URL, provisions, migrates and runs the functions; stops it all again."""

    def __init__(self, options: PlatformOptions) -> None:
        self.options = options
        self.template = load_template(TEMPLATE_PATH)
        self.group = ProcessGroup(preferred_ports=options.preferred_ports)
        self.state_lock = StateLock(options.state_dir)
        self.urls: dict[str, str] = {}
        self.stack: StackInfo | None = None
        self.runtime: LocalRuntime | None = None
        self.api_url = ""
        self.admin_api_key = ""
        self._parameters: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def processes(self) -> list[ManagedProcess]:
        """The servers this stack started (not those given by URL)."""
        return self.group.processes

    # -------------------------------------------------------------------- servers
    def start_servers(self) -> None:
        """Start every server not given by URL, all at once."""
        state = self.options.state_dir.resolve()
        errors: list[str] = []

        def start_one(name: str) -> None:
            key, _, launcher = SERVERS[name]
            for attempt in range(3):  # again, on a fresh port, if another process took the one it picked first
                try:
                    self.urls[key] = launcher(state, self.group, None)[0]
                    return
                except Exception as exc:
                    if attempt == 2 or isinstance(exc, StartCancelledError) or not isinstance(exc, ProcessFailedError):
                        errors.append(f"{key}: {exc}")
                        return

        threads = []
        for name, (key, variable, _) in SERVERS.items():
            if self.options.environ.get(variable):
                self.urls[key] = self.options.environ[variable]
                continue
            self.options.log(f"starting {name} ...")
            # a daemon thread: an interrupted start-up must not wait for it at exit; its server is in the group
            threads.append(threading.Thread(target=start_one, args=(name,), name=f"start-{name}", daemon=True))
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                thread.join()
        except BaseException:
            self.group.stop_all(grace=INTERRUPTED_START_GRACE_SECONDS)
            raise
        if errors:
            raise RuntimeError("could not start the local servers:\n" + "\n".join(errors))

    # -------------------------------------------------------------------- provisioning
    def provision(self) -> None:
        opts = self.options
        postgres, mongo = self.urls["postgres_server"], self.urls["mongo_server"]
        # a server given by URL is used as it is, unless the stack wants fresh databases of its own
        if opts.environ.get("DATABASE_URL") and not opts.create_fresh_database:
            self.urls["postgres"] = postgres
        else:
            postgres_database(postgres, opts.database_name, drop=opts.create_fresh_database, create=True)
            self.urls["postgres"] = with_database(postgres, opts.database_name)
        given_mongo = opts.environ.get("MONGODB_URI") and not opts.create_fresh_database
        self.urls["mongo"] = mongo if given_mongo else with_database(mongo, opts.database_name)
        # the functions connect as the least-privilege role the migrations create; only prepare_databases
        # connects as the owner
        _ensure_layers_importable()
        from chat4all.config import app_database_url

        password = app_role_password(self.urls["postgres"], opts.environ)
        self.urls["postgres_app"] = app_database_url(self.urls["postgres"], password)
        self._parameters = {
            "DatabaseUrl": self.urls["postgres_app"],
            "MongoDbUri": self.urls["mongo"],
            "RedisUrl": self.urls["redis"],
            "ClamdAddress": self.urls["clamd"],
        }
        for name, key in ENV_PARAMETERS.items():
            if value := opts.channel_api_bases.get(name) or opts.environ.get(name):
                self._parameters[key] = value
        opts.log(f"deploying the AWS resources of template.yaml to {self.urls['aws']} ...")
        self._deploy()

    def _deploy(self) -> None:
        state_dir = self.options.state_dir.resolve()
        self.stack = deploy_stack(
            self.urls["aws"], TEMPLATE_PATH, self.options.stack_name, self._parameters, state_dir=state_dir
        )

    def function_env(self) -> dict[str, str]:
        """Every function's variables together: what this process needs to prepare and read the databases."""
        env: dict[str, str] = {}
        for logical_id in functions(self.template):
            env.update(self.function_environment(logical_id))
        return env

    def function_environment(self, logical_id: str) -> dict[str, str]:
        """One function's own variables (Globals and its own, resolved), and where AWS is locally."""
        assert self.stack is not None
        env = function_environment(self.template, logical_id, self.stack.resolve)
        return env | LOCAL_AWS_ENV | {"AWS_ENDPOINT_URL": self.urls["aws"]} | self.options.function_variables

    def prepare_databases(self) -> None:
        from chat4all.prepare_databases import prepare_databases

        key = self.options.admin_api_key or self.options.environ.get("CHAT4ALL_ADMIN_API_KEY") or ""
        self.admin_api_key = key or "c4a_admin_" + secrets.token_urlsafe(24)
        report = prepare_databases(
            self.admin_api_key,
            owner_database_url=self.urls["postgres"],
            app_password=app_role_password(self.urls["postgres"], self.options.environ),
        )
        if report.migrations_applied:
            self.options.log(f"PostgreSQL migrations applied: {', '.join(report.migrations_applied)}")

    # -------------------------------------------------------------------- functions
    def start_functions(self) -> None:
        assert self.stack is not None
        # this process reads the databases as the functions do: from the secrets the stack made of their URLs
        # (chat4all.config.SECRET_VARIABLES), not from a URL given to the stack (the owner's, for DATABASE_URL)
        for variable in SECRET_SETTINGS:
            os.environ.pop(variable, None)
        os.environ.update(self.function_env())
        self.prepare_databases()
        self.runtime = LocalRuntime(
            self.template,
            TEMPLATE_PATH.parent,
            function_environment=self.function_environment,
            log_dir=self.options.state_dir.resolve() / "logs" / "functions",
            resolve=self.stack.resolve,
            aws_endpoint_url=self.urls["aws"],
            options=RuntimeOptions.from_env(self.options.environ),
            log=self.options.log,
        )
        self.runtime.start(http_port=free_port() if self.options.port == 0 else self.options.port)
        self.api_url = self.runtime.api_url
        self.take_up_pending_messages()
        # what tools run beside `make dev` (make redrive, make backup/restore) need to reach this stack; removed
        # at stop; private: a database URL given by the user may hold a password
        running = {
            "api_url": self.api_url,
            "environment": self.queue_environment(),
            "databases": {"DATABASE_URL": self.urls["postgres"], "MONGODB_URI": self.urls["mongo"]},
            "stack_name": self.options.stack_name,
        }
        running_file = self.options.state_dir / RUNNING_FILE
        running_file.touch(mode=0o600)
        running_file.write_text(json.dumps(running, indent=2))

    def queue_environment(self) -> dict[str, str]:
        """Where this stack's queues are, as the functions and `python -m chat4all.redrive` name them."""
        assert self.stack is not None
        queues = {variable: self.stack.resolve({"Ref": logical_id}) for variable, logical_id in QUEUE_VARIABLES.items()}
        return {"AWS_ENDPOINT_URL": self.urls["aws"], **LOCAL_AWS_ENV, **queues}

    def take_up_pending_messages(self) -> None:
        """Run the sweeper once for every PENDING message, whatever its age.

        LocalStack keeps nothing across a restart: messages that were in flight when the stack stopped (or
        LocalStack died) are PENDING in MongoDB with no record in the new queue. In AWS the queue survives and
        the scheduled sweeps are enough; locally this is the start's own sweep.
        """
        if self.runtime is None or SWEEPER_FUNCTION not in self.template["Resources"]:
            return
        result = self.runtime.invoke(SWEEPER_FUNCTION, {"pending_after_seconds": 0}, timeout=START_SWEEP_TIMEOUT)
        if not result.ok:
            # the scheduled sweeps take them up later; a start is not refused for it
            self.options.log(f"the start-up sweep failed ({result.error_type}); the scheduled sweeps will retry")
            return
        report = result.json() or {}
        if report.get("found"):
            self.options.log(f"messages PENDING from an earlier run, re-enqueued: {report.get('requeued')}")

    # -------------------------------------------------------------------- faults (bench/chaos.py)
    def server_process(self, name: str) -> ManagedProcess:
        """The running process of one of the servers this stack started: localstack, postgres, mongo, redis."""
        for process in reversed(self.group.processes):
            if process.name == name and process.is_running():
                return process
        raise LookupError(f"no running {name} server of this stack")

    def restart_server(self, name: str) -> None:
        """Start a server of this stack again, on the port the functions know, after it died.

        LocalStack comes back empty: the template's resources are deployed again (same names, so the same
        queue URLs; the KMS keys with the same id and material) and the start-up sweep re-enqueues what the
        lost queues held. A secret made again has a new ARN (Secrets Manager adds a random suffix), and every
        function names the secrets (Globals): each gets its new variables as UpdateFunctionConfiguration would
        give them (new containers), and so does this process.
        """
        key, _, launcher = SERVERS[name]
        launcher(self.options.state_dir.resolve(), self.group, urlsplit(self.urls[key]).port)
        if name == "localstack":
            self._deploy()
            os.environ.update(self.function_env())
            for logical_id in functions(self.template):
                if self.runtime is not None:
                    self.runtime.update_function_environment(logical_id, self.function_environment(logical_id))
            self.take_up_pending_messages()

    def invoke(self, logical_id: str, event: Any) -> InvocationResult:
        """Invoke a function of the template (by logical id) as Lambda's Invoke does, and wait for its answer."""
        if self.runtime is None:
            raise RuntimeError("the functions are not running")
        return self.runtime.invoke(logical_id, event)

    def start(self) -> LocalPlatform:
        """Start everything; on any failure or interrupt (KeyboardInterrupt), stop what was started and re-raise."""
        try:
            self.state_lock.acquire()
            if self.options.port:
                require_free_port(self.options.port, "CHAT4ALL_PORT")
            self.start_servers()
            self.provision()
            self.start_functions()
        except BaseException:
            self.stop(grace=INTERRUPTED_START_GRACE_SECONDS)
            raise
        return self

    def stop(self, grace: float = 15.0) -> None:
        """Stop the functions, then every server this stack started (SIGKILL after `grace` seconds)."""
        with self._lock:
            if self.runtime is not None:
                self.runtime.stop()
                self.runtime = None
            self.group.stop_all(grace)
            (self.options.state_dir / RUNNING_FILE).unlink(missing_ok=True)
            self.state_lock.release()


@contextlib.contextmanager
def throwaway_platform(
    label: str, channel_api_bases: dict[str, str], function_variables: dict[str, str] | None = None
) -> Iterator[LocalPlatform]:
    """A whole platform with its own state dir, stack and databases, all removed again on exit; every function
    gets `function_variables` besides the template's.

    Servers given by URL are used as they are, but still get databases of their own, dropped on exit.
    """
    run_id = uuid.uuid4().hex[:8]
    options = PlatformOptions(
        port=0,
        state_dir=REPO_ROOT / ".devstack" / f"{label}-{run_id}",
        stack_name=f"chat4all-{label}-{run_id}",
        admin_api_key=f"c4a_{label}_admin_{uuid.uuid4().hex}",
        database_name=f"chat4all_{label}_{run_id}",
        create_fresh_database=True,
        preferred_ports=False,
        channel_api_bases=channel_api_bases,
        function_variables=dict(function_variables or {}),
    )
    platform = LocalPlatform(options).start()
    try:
        yield platform
    finally:
        try:
            from chat4all import bootstrap

            bootstrap.postgres().close()
            mongo = bootstrap.mongo()
            # a server of its own goes with the state dir; a database on a given server is dropped, which for
            # a large one takes longer than the functions' 5 s socket timeout
            if options.environ.get("MONGODB_URI"):
                with pymongo.timeout(600):
                    mongo.client.drop_database(mongo.name)
            mongo.client.close()  # before its server stops: closing afterwards waits for a server that is gone
            postgres_database(platform.urls["postgres_server"], options.database_name, drop=True, create=False)
        finally:
            platform.stop()
            wipe_state(options.state_dir)

"""The local embedded stack: template.yaml on moto's server, the Lambda handlers as local workers.

:class:`LocalStack` plays CloudFormation, S3's notifications and Lambda on one machine, with no
AWS account and no Docker, everything on 127.0.0.1:

1. **Endpoint** — moto's standalone server (its WSGI app under werkzeug, in a child process) on
   ``127.0.0.1:PORT``, with two corrections: KMS ``Sign`` honours ``MessageType=DIGEST`` and the
   4096-byte RAW limit (moto ignores both; :mod:`compiler.kms` relies on them), and requests are
   serialised (moto's S3 ``If-Match`` / DynamoDB conditions are check-then-set, so concurrent
   writers could otherwise both win); an SQS ``ReceiveMessage`` locks only its queue, so a long
   poll holds up nothing else.
2. **Resources** — created from the template itself, in dependency order, with its parameter
   defaults: buckets (versioning, encryption, public access block, ownership, lifecycle), bucket
   policies, the DynamoDB table, the KMS key and alias, queues with their ``RedrivePolicy``, the
   SNS topic and subscriptions. Statements that deny plain HTTP (``aws:SecureTransport``) are
   dropped: the local endpoint has no TLS, and moto enforces bucket policies.
3. **Event sources** — an ``SQS`` event becomes a poller with the template's ``BatchSize``,
   ``ReportBatchItemFailures`` (only the failed messages are left for redelivery; the queue's
   ``RedrivePolicy`` moves them to the DLQ after ``maxReceiveCount``) and
   ``ScalingConfig.MaximumConcurrency`` (capped locally). An ``S3`` event becomes an S3 → SQS
   notification to a local ``<prefix>-<function>-events`` queue whose ``RedrivePolicy`` points at
   the function's ``DeadLetterQueue`` with ``maxReceiveCount`` = ``MaximumRetryAttempts`` + 1,
   which is how Lambda's asynchronous retries end.
4. **Functions** — each worker is its own process (multiprocessing *spawn*), because handlers read
   their settings at import time: the function's resolved ``Environment`` (Globals + its own),
   ``AWS_ENDPOINT_URL``, the region, dummy credentials and Lambda's own variables are set before
   the handler module (``Handler``, or the Dockerfile's ``CMD`` for image functions) is imported.
   A worker that dies is replaced (and counted as a crash); an invocation that outlives the
   function's ``Timeout`` is killed, as Lambda does.
5. **Device repository** — devices pull ``http://127.0.0.1:PORT/<artifacts bucket>/artifacts/``
   with no credentials: the local stack adds a read-only anonymous ``s3:GetObject`` statement for
   that prefix (moto, like S3, refuses anonymous reads otherwise), and writes the signing key's
   public key (``GetPublicKey``) to ``<state dir>/signing-key.der`` and ``.pub.pem``.

Processes: every child starts its own process group (Ctrl-C reaches only the supervisor, which
stops them in order; killing a group reaches the TVM compile process a worker started) and asks
the kernel for SIGTERM when the supervisor dies (``PR_SET_PDEATHSIG``), so nothing outlives it.
The state directory holds ``stack.pid``, ``state.json`` (endpoint, resources, outputs, workers),
``.lock`` (held while the stack runs) and ``logs/`` (one file per function and one for moto).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import importlib
import io
import json
import logging
import multiprocessing as mp
import os
import platform
import re
import signal
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .template import (
    SERVERLESS_FUNCTION,
    LocalStackError,
    PhysicalResource,
    Resolver,
    Template,
    TemplateError,
    load_template,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DUMMY_CREDENTIALS",
    "FunctionInfo",
    "LocalStack",
    "StackInfo",
    "StackOptions",
    "StackStartError",
    "running_stack",
    "stop_running_stack",
]

DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
#: The compile function's settings that name the device repository bucket and the signing key.
REPOSITORY_BUCKET_ENV = "EDGEFORGE_ARTIFACTS_BUCKET"
SIGNING_KEY_ENV = "EDGEFORGE_KMS_KEY_ID"
#: Prefix of the device repository in the artifacts bucket (compiler.jobs.ARTIFACTS_PREFIX).
REPOSITORY_PREFIX = "artifacts/"

_EMULATED = ("AWS::S3::Bucket", "AWS::S3::BucketPolicy", "AWS::DynamoDB::Table",
             "AWS::KMS::Key", "AWS::KMS::Alias", "AWS::SQS::Queue", "AWS::SNS::Topic",
             "AWS::SNS::Subscription")
_PR_SET_PDEATHSIG = 1
#: The function properties the local stack uses (others may name resources it does not create).
_FUNCTION_SETTINGS = ("FunctionName", "Timeout", "MemorySize", "Environment", "DeadLetterQueue",
                      "EventInvokeConfig", "ReservedConcurrentExecutions", "Architectures")
#: Lambda's architecture names as ``platform.machine()`` spells them.
_MACHINE = {"x86_64": "x86_64", "arm64": "aarch64"}
#: Shared counters of one worker process (a multiprocessing Array of doubles).
_READY, _BUSY_SINCE, _INVOCATIONS, _RECORDS, _FAILED_RECORDS, _ERRORS = range(6)
_COUNTERS = 6


class StackStartError(LocalStackError):
    """The stack could not start: the port is taken, a resource or a worker failed."""


class StackOptions(BaseModel):
    """How to run the local stack."""

    model_config = ConfigDict(extra="forbid")

    template: Path = Field(default_factory=lambda: _default_template())
    #: Where the pid file, state.json, the signing key's public key and the logs go.
    state_dir: Path = Path(".cache/devstack")
    #: TCP port on 127.0.0.1; 0 = any free port.
    port: int = Field(default=5000, ge=0, le=65535)
    #: Template parameter overrides (as ``sam deploy --parameter-overrides``).
    parameters: dict[str, str] = Field(default_factory=dict)
    stack_name: str = Field(default="edgeforge-local", pattern=r"^[A-Za-z][A-Za-z0-9-]{0,60}$")
    #: Most worker processes per function (the template's MaximumConcurrency caps it too).
    max_concurrency: int = Field(default=2, ge=1, le=64)
    #: Seconds before a failed message is delivered again. Lambda leaves it invisible for the
    #: queue's whole visibility timeout (5400 s for compiles); locally that only makes you wait.
    retry_delay_s: int = Field(default=5, ge=0, le=43200)
    #: Long-poll wait of each worker's ReceiveMessage.
    poll_wait_s: int = Field(default=2, ge=0, le=20)
    #: How long to wait for the server and every worker to come up.
    start_timeout_s: float = Field(default=120.0, gt=0)


def _default_template() -> Path:
    repo = Path(__file__).resolve().parents[2] / "template.yaml"
    return repo if repo.is_file() else Path("template.yaml")


class FunctionInfo(BaseModel):
    """A function as the local stack runs it."""

    logical_id: str
    name: str
    arn: str
    handler: str
    code_root: str
    event_source: str
    queue_url: str
    queue_arn: str
    batch_size: int
    max_batching_window_s: float = 0
    report_batch_item_failures: bool
    concurrency: int
    timeout_s: float
    memory_mb: int
    log: str
    #: The function's variables from the template (Globals + its own), resolved.
    environment: dict[str, str]


class ProcessInfo(BaseModel):
    role: str
    pid: int
    start_time: int | None = None


class StackInfo(BaseModel):
    """What ``state.json`` holds: everything a client of the running stack needs."""

    status: str
    pid: int
    pid_start_time: int | None = None
    started_at: str
    endpoint: str
    port: int
    region: str
    account: str
    stack_name: str
    template: str
    state_dir: str
    parameters: dict[str, Any]
    resources: dict[str, dict[str, Any]]
    outputs: dict[str, Any]
    functions: dict[str, FunctionInfo]
    repository_url: str | None = None
    public_key_der: str | None = None
    public_key_pem: str | None = None
    not_emulated: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    processes: list[ProcessInfo] = Field(default_factory=list)
    workers: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)
    failure: str | None = None

    def client_env(self) -> dict[str, str]:
        """Environment for boto3 / the AWS CLI to use this stack."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": self.region,
                "AWS_REGION": self.region, **DUMMY_CREDENTIALS}

    def client(self, service: str) -> Any:
        """A boto3 client for this stack (dummy credentials, the local endpoint)."""
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id=DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])


# --------------------------------------------------------------------------------------------
# Child processes
# --------------------------------------------------------------------------------------------


def _proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (/proc/PID/stat field 22): with the pid, it
    identifies a process even if the pid is reused later."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


def _same_process(pid: int, start_time: int | None) -> bool:
    now = _proc_start_time(pid)
    return now is not None and (start_time is None or now == start_time)


def _set_parent_death_signal(sig: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _child_setup(log_path: str, parent_pid: int) -> None:
    """First thing in every child: its own process group, SIGTERM when the supervisor dies,
    stdout/stderr into its log file, SIGTERM → a clean exit, Ctrl-C left to the supervisor."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    _set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent_pid:  # the supervisor died before we asked
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_exit)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]


# -- the AWS endpoint ------------------------------------------------------------------------


def kms_sign_like_aws(original: Any) -> Any:
    """KMS ``Sign`` as the API reference describes it, where moto differs: a ``DIGEST`` message
    is signed as the prehashed SHA-256 (moto hashes it again, so no verifier would accept the
    signature), and ``RAW`` messages over 4096 bytes are refused (moto signs them). Wraps moto's
    ``KmsResponse.sign``; the test fixtures use the same function."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, utils
    from moto.kms.exceptions import ValidationException

    def sign(self: Any) -> str:
        message = self._get_param("Message")
        if isinstance(message, str):
            message = message.encode("utf-8")
        kind = self._get_param("MessageType") or "RAW"
        if kind == "RAW":
            if message is not None and len(message) > 4096:
                raise ValidationException(
                    "1 validation error detected: Value at 'message' failed to satisfy "
                    "constraint: Member must have length less than or equal to 4096")
            return original(self)  # type: ignore[no-any-return]
        algorithm = self._get_param("SigningAlgorithm")
        if algorithm != "ECDSA_SHA_256" or len(message) != 32:
            raise ValidationException(f"Digest is invalid length for algorithm {algorithm}.")
        key = self.kms_backend.describe_key(self._get_param("KeyId"))
        der = key.private_key.private_key.sign(message, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        return json.dumps({"KeyId": key.arn, "SigningAlgorithm": algorithm,
                           "Signature": base64.b64encode(der).decode("ascii")})

    return sign


def _patch_moto_kms() -> None:
    from moto.kms.responses import KmsResponse

    KmsResponse.sign = kms_sign_like_aws(KmsResponse.sign)  # type: ignore[method-assign]


class _SerializedApp:
    """One request at a time into moto: its S3 ``If-Match`` / ``If-None-Match`` and DynamoDB
    conditions are check-then-set, and two threads could both win. SQS ``ReceiveMessage`` takes a
    lock of its queue instead, so a long poll holds up only other receives from that queue (two
    concurrent receives could otherwise both take the same message)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()
        self._queue_locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @staticmethod
    def _receive_queue(environ: dict[str, Any]) -> str | None:
        """The QueueUrl of a ReceiveMessage request (JSON or query protocol), else None."""
        json_receive = str(environ.get("HTTP_X_AMZ_TARGET", "")).endswith(".ReceiveMessage")
        form = str(environ.get("CONTENT_TYPE", "")).startswith("application/x-www-form-urlencoded")
        if not (json_receive or form):
            return None
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        if json_receive:
            try:
                return str(json.loads(body or b"{}").get("QueueUrl", ""))
            except (ValueError, AttributeError):
                return ""
        params = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        if params.get("Action") == ["ReceiveMessage"]:
            return params.get("QueueUrl", [""])[0]
        return None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        queue = self._receive_queue(environ)
        if queue is None:
            lock = self.lock
        else:
            with self._guard:
                lock = self._queue_locks.setdefault(queue, threading.Lock())
        with lock:
            return list(self.app(environ, start_response))


def _serve_moto(conn: Any, port: int, log_path: str, parent_pid: int) -> None:
    """Child: moto's server on 127.0.0.1 (never another interface)."""
    _child_setup(log_path, parent_pid)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    _patch_moto_kms()
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug import serving
    from werkzeug.serving import make_server

    serving._log_add_style = False  # type: ignore[attr-defined]  # no ANSI colours in the log
    app = _SerializedApp(DomainDispatcherApplication(create_backend_app))
    try:
        server = make_server("127.0.0.1", port, app, threaded=True,
                             request_handler=MotoRequestHandler)
    except (OSError, SystemExit) as e:  # werkzeug exits when the port is taken
        why = e.strerror if isinstance(e, OSError) else "the port is in use"
        conn.send(("error", f"cannot listen on 127.0.0.1:{port}: {why}"))
        return
    conn.send(("ready", server.server_port))
    conn.close()
    try:
        server.serve_forever()
    finally:
        server.server_close()


# -- the Lambda workers ----------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs (pickled to the spawned child)."""

    function: FunctionInfo
    #: The whole environment of the process (never written to state.json: it includes the
    #: host's environment).
    env: dict[str, str]
    module: str
    attribute: str
    parent_pid: int
    retry_delay_s: int
    poll_wait_s: int
    region: str


@dataclass
class LocalContext:
    """The parts of Lambda's context object that handlers and powertools read."""

    function_name: str
    invoked_function_arn: str
    memory_limit_in_mb: int
    deadline: float
    aws_request_id: str
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = "local"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.time()) * 1000))


def _sqs_record(message: Mapping[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """An SQS message as Lambda's event source mapping delivers it."""
    attributes = {}
    for name, value in (message.get("MessageAttributes") or {}).items():
        attributes[name] = {
            "stringValue": value.get("StringValue"),
            "binaryValue": (base64.b64encode(value["BinaryValue"]).decode("ascii")
                            if value.get("BinaryValue") is not None else None),
            "stringListValues": value.get("StringListValues", []),
            "binaryListValues": value.get("BinaryListValues", []),
            "dataType": value.get("DataType", "String"),
        }
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message.get("Body", ""),
        "attributes": dict(message.get("Attributes") or {}),
        "messageAttributes": attributes,
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


def _failed_ids(result: Any, ids: list[str], report: bool) -> set[str]:
    """The messages to leave on the queue after a successful invocation. With
    ReportBatchItemFailures, Lambda treats a malformed response as a failure of the whole
    batch; without it, the response is ignored."""
    if not report or not isinstance(result, Mapping) or "batchItemFailures" not in result:
        return set()
    failures = result.get("batchItemFailures")
    if not isinstance(failures, list):
        return set(ids)
    out = set()
    for failure in failures:
        item = failure.get("itemIdentifier") if isinstance(failure, Mapping) else None
        if not item or item not in ids:
            return set(ids)
        out.add(item)
    return out


def _worker_main(spec: WorkerSpec, counters: Any) -> None:
    """Child: import the handler with the function's environment, then poll its queue as the
    event source mapping does, forever (SIGTERM ends it)."""
    fn = spec.function
    _child_setup(fn.log, spec.parent_pid)
    os.environ.clear()
    os.environ.update(spec.env)
    sys.path.insert(0, fn.code_root)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s [{fn.logical_id} %(process)d] "
                               "%(message)s")
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    log = logging.getLogger("functions.local.worker")
    handler = getattr(importlib.import_module(spec.module), spec.attribute)

    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    sqs = boto3.client("sqs")

    def receive(count: int, wait_s: int) -> list[dict[str, Any]]:
        try:
            return list(sqs.receive_message(
                QueueUrl=fn.queue_url, MaxNumberOfMessages=min(count, 10), WaitTimeSeconds=wait_s,
                MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"],
            ).get("Messages", []))
        except (BotoCoreError, ClientError) as e:  # the poller keeps going, as Lambda's does
            log.warning("receiving from %s failed: %s", fn.queue_url, e)
            time.sleep(1)
            return []

    counters[_READY] = 1
    log.info("ready: %s polls %s (batch size %d)", fn.handler, fn.queue_url, fn.batch_size)
    while True:
        messages = receive(fn.batch_size, spec.poll_wait_s)
        window_end = time.monotonic() + fn.max_batching_window_s
        while messages and len(messages) < fn.batch_size and time.monotonic() < window_end:
            messages += receive(fn.batch_size - len(messages), 1)
        if not messages:
            continue
        ids = [m["MessageId"] for m in messages]
        event = {"Records": [_sqs_record(m, fn.queue_arn, spec.region) for m in messages]}
        request_id = str(uuid.uuid4())
        context = LocalContext(function_name=fn.name, memory_limit_in_mb=fn.memory_mb,
                               invoked_function_arn=fn.arn,
                               deadline=time.time() + fn.timeout_s, aws_request_id=request_id,
                               log_group_name=f"/aws/lambda/{fn.name}")
        log.info("START RequestId: %s (%d record(s))", request_id, len(messages))
        started = time.monotonic()
        counters[_BUSY_SINCE] = time.time()
        try:
            result = handler(event, context)
            failed = _failed_ids(result, ids, fn.report_batch_item_failures)
        except Exception:
            log.exception("the invocation failed: every record of the batch will be retried")
            counters[_ERRORS] += 1
            failed = set(ids)
        finally:
            counters[_BUSY_SINCE] = 0
        done = [m for m in messages if m["MessageId"] not in failed]
        try:
            for start in range(0, len(done), 10):
                sqs.delete_message_batch(QueueUrl=fn.queue_url, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(done[start:start + 10])])
            for m in messages:
                if m["MessageId"] in failed:
                    sqs.change_message_visibility(QueueUrl=fn.queue_url,
                                                  ReceiptHandle=m["ReceiptHandle"],
                                                  VisibilityTimeout=spec.retry_delay_s)
        except (BotoCoreError, ClientError) as e:  # undeleted messages come back: at least once
            log.warning("settling the batch on %s failed: %s", fn.queue_url, e)
        counters[_INVOCATIONS] += 1
        counters[_RECORDS] += len(messages)
        counters[_FAILED_RECORDS] += len(failed)
        log.info("END RequestId: %s Duration: %.0f ms, %d record(s), %d left for retry",
                 request_id, (time.monotonic() - started) * 1000, len(messages), len(failed))


# --------------------------------------------------------------------------------------------
# Resources
# --------------------------------------------------------------------------------------------


def _secure_transport_only(statement: Mapping[str, Any]) -> bool:
    condition = statement.get("Condition") or {}
    return any("aws:SecureTransport" in (block or {}) for block in condition.values())


def _kebab(name: str) -> str:
    name = re.sub(r"Function$", "", name) or name
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


class _Provisioner:
    """Creates one resource of each emulated type from its resolved properties."""

    def __init__(self, stack: LocalStack, resolver: Resolver) -> None:
        self.stack = stack
        self.r = resolver
        self.notes = stack._notes

    def client(self, service: str) -> Any:
        return self.stack.client(service)

    def _default_name(self, logical_id: str) -> str:
        return f"{self.stack.options.stack_name}-{logical_id}".lower()

    def _try(self, what: str, call: Any, *args: Any, **kwargs: Any) -> None:
        try:
            call(*args, **kwargs)
        except Exception as e:  # optional settings: note them, the stack still works
            self.notes.append(f"{what}: not applied locally ({type(e).__name__}: {e})")

    def create(self, logical_id: str, kind: str, props: dict[str, Any]) -> PhysicalResource:
        method = {
            "AWS::S3::Bucket": self.bucket, "AWS::S3::BucketPolicy": self.bucket_policy,
            "AWS::DynamoDB::Table": self.table, "AWS::KMS::Key": self.kms_key,
            "AWS::KMS::Alias": self.kms_alias, "AWS::SQS::Queue": self.queue,
            "AWS::SNS::Topic": self.topic, "AWS::SNS::Subscription": self.subscription,
        }[kind]
        return method(logical_id, props)  # type: ignore[no-any-return]

    def bucket(self, logical_id: str, props: dict[str, Any]) -> PhysicalResource:
        s3 = self.client("s3")
        name = str(props.get("BucketName") or self._default_name(logical_id))
        s3.create_bucket(Bucket=name)
        if "VersioningConfiguration" in props:
            s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={
                "Status": props["VersioningConfiguration"]["Status"]})
        if "BucketEncryption" in props:
            rules = [{("ApplyServerSideEncryptionByDefault" if k == "ServerSideEncryptionByDefault"
                       else k): v for k, v in rule.items()}
                     for rule in props["BucketEncryption"]["ServerSideEncryptionConfiguration"]]
            self._try(f"{logical_id} encryption", s3.put_bucket_encryption, Bucket=name,
                      ServerSideEncryptionConfiguration={"Rules": rules})
        if "PublicAccessBlockConfiguration" in props:
            block = dict(props["PublicAccessBlockConfiguration"])
            if name == self.stack._repository_bucket:
                # the device repository is read anonymously (see _open_repository)
                block.update(BlockPublicPolicy=False, RestrictPublicBuckets=False)
            self._try(f"{logical_id} public access block", s3.put_public_access_block,
                      Bucket=name, PublicAccessBlockConfiguration=block)
        if "OwnershipControls" in props:
            self._try(f"{logical_id} ownership controls", s3.put_bucket_ownership_controls,
                      Bucket=name, OwnershipControls=props["OwnershipControls"])
        if "LifecycleConfiguration" in props:
            rules = [self._lifecycle_rule(rule)
                     for rule in props["LifecycleConfiguration"].get("Rules", [])]
            self._try(f"{logical_id} lifecycle", s3.put_bucket_lifecycle_configuration,
                      Bucket=name, LifecycleConfiguration={"Rules": rules})
        arn = f"arn:{self.r.partition}:s3:::{name}"
        return PhysicalResource("AWS::S3::Bucket", name, {
            "Arn": arn, "DomainName": f"{name}.s3.amazonaws.com",
            "RegionalDomainName": f"{name}.s3.{self.r.region}.amazonaws.com"})

    @staticmethod
    def _lifecycle_rule(rule: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"Status": rule.get("Status", "Enabled"),
                               "Filter": {"Prefix": rule.get("Prefix", "")}}
        if "Id" in rule:
            out["ID"] = rule["Id"]
        if "ExpirationInDays" in rule:
            out["Expiration"] = {"Days": int(rule["ExpirationInDays"])}
        for key in ("NoncurrentVersionExpiration", "AbortIncompleteMultipartUpload"):
            if key in rule:
                out[key] = {k: int(v) for k, v in rule[key].items()}
        return out

    def bucket_policy(self, logical_id: str, props: dict[str, Any]) -> PhysicalResource:
        bucket = str(props["Bucket"])
        document = dict(props["PolicyDocument"])
        statements = document.get("Statement") or []
        statements = [statements] if isinstance(statements, Mapping) else list(statements)
        kept = [s for s in statements if not _secure_transport_only(s)]
        if len(kept) != len(statements):
            self.notes.append(f"{logical_id}: statements denying plain HTTP (aws:SecureTransport) "
                              "left out: the local endpoint is http://127.0.0.1")
        if kept:
            self.client("s3").put_bucket_policy(
                Bucket=bucket, Policy=json.dumps({**document, "Statement": kept}))
        return PhysicalResource("AWS::S3::BucketPolicy", bucket)

    def table(self, logical_id: str, props: dict[str, Any]) -> PhysicalResource:
        ddb = self.client("dynamodb")
        name = str(props.get("TableName") or self._default_name(logical_id))
        kwargs: dict[str, Any] = {"TableName": name}
        for key in ("AttributeDefinitions", "KeySchema", "BillingMode", "GlobalSecondaryIndexes",
                    "LocalSecondaryIndexes", "ProvisionedThroughput"):
            if key in props:
                kwargs[key] = props[key]
        if kwargs.get("BillingMode", "PROVISIONED") == "PROVISIONED":
            kwargs.setdefault("ProvisionedThroughput",
                              {"ReadCapacityUnits": 5, "WriteCapacityUnits": 5})
        if "StreamSpecification" in props:
            kwargs["StreamSpecification"] = {"StreamEnabled": True, **props["StreamSpecification"]}
        if "SSESpecification" in props:
            kwargs["SSESpecification"] = {
                "Enabled": str(props["SSESpecification"].get("SSEEnabled", False)).lower() == "true"}
        description = ddb.create_table(**kwargs)["TableDescription"]
        pitr = props.get("PointInTimeRecoverySpecification")
        if pitr:
            self._try(f"{logical_id} point-in-time recovery", ddb.update_continuous_backups,
                      TableName=name, PointInTimeRecoverySpecification={
                          "PointInTimeRecoveryEnabled": str(
                              pitr.get("PointInTimeRecoveryEnabled")).lower() == "true"})
        ttl = props.get("TimeToLiveSpecification")
        if ttl:
            self._try(f"{logical_id} time to live", ddb.update_time_to_live, TableName=name,
                      TimeToLiveSpecification={"Enabled": str(ttl.get("Enabled")).lower() == "true",
                                               "AttributeName": ttl.get("AttributeName", "")})
        attributes = {"Arn": description["TableArn"]}
        if description.get("LatestStreamArn"):
            attributes["StreamArn"] = description["LatestStreamArn"]
        return PhysicalResource("AWS::DynamoDB::Table", name, attributes)

    def kms_key(self, logical_id: str, props: dict[str, Any]) -> PhysicalResource:
        kwargs: dict[str, Any] = {
            "KeySpec": props.get("KeySpec", "SYMMETRIC_DEFAULT"),
            "KeyUsage": props.get("KeyUsage", "ENCRYPT_DECRYPT"),
            "Description": str(props.get("Description", "")),
        }
        if "KeyPolicy" in props:
            kwargs["Policy"] = json.dumps(props["KeyPolicy"])
        meta = self.client("kms").create_key(**kwargs)["KeyMetadata"]
        return PhysicalResource("AWS::KMS::Key", meta["KeyId"],
                                {"Arn": meta["Arn"], "KeyId": meta["KeyId"]})

    def kms_alias(self, logical_id: str, props: dict[str, Any]) -> PhysicalResource:
        name = str(props["AliasName"])
        self.client("kms").create_alias(AliasName=name, TargetKeyId=str(props["TargetKeyId"]))
        return PhysicalResource("AWS::KMS::Alias", name)

    def queue(self, logical_id: str, props: dict[str, Any]) -> PhysicalResource:
        name = str(props.get("QueueName") or self._default_name(logical_id))
        attributes: dict[str, str] = {}
        for key, value in props.items():
            if key in ("QueueName", "Tags"):
                continue
            if isinstance(value, Mapping):
                attributes[key] = json.dumps(value)
            elif isinstance(value, bool):
                attributes[key] = str(value).lower()
            else:
                attributes[key] = str(value)
        return self.stack._create_queue(name, attributes)

    def topic(self, logical_id: str, props: dict[str, Any]) -> PhysicalResource:
        sns = self.client("sns")
        name = str(props.get("TopicName") or self._default_name(logical_id))
        attributes = {k: str(props[k]) for k in ("DisplayName",) if k in props}
        if props.get("FifoTopic"):
            attributes["FifoTopic"] = "true"
        arn = sns.create_topic(Name=name, Attributes=attributes)["TopicArn"]
        for sub in props.get("Subscription") or []:
            sns.subscribe(TopicArn=arn, Protocol=sub["Protocol"], Endpoint=sub["Endpoint"])
        return PhysicalResource("AWS::SNS::Topic", arn, {"TopicArn": arn, "TopicName": name})

    def subscription(self, logical_id: str, props: dict[str, Any]) -> PhysicalResource:
        attributes = {k: (json.dumps(v) if isinstance(v, Mapping) else str(v).lower()
                          if isinstance(v, bool) else str(v))
                      for k, v in props.items()
                      if k in ("FilterPolicy", "RawMessageDelivery", "RedrivePolicy")}
        arn = self.client("sns").subscribe(
            TopicArn=props["TopicArn"], Protocol=props["Protocol"], Endpoint=props["Endpoint"],
            Attributes=attributes, ReturnSubscriptionArn=True)["SubscriptionArn"]
        return PhysicalResource("AWS::SNS::Subscription", arn)


def _topological(template: Template, names: list[str]) -> list[str]:
    """``names`` ordered so that each comes after the resources it refers to."""
    ordered: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise TemplateError(f"circular dependency through {name}")
        state[name] = 1
        for dep in sorted(template.dependencies(name)):
            if dep in names:
                visit(dep)
        state[name] = 2
        ordered.append(name)

    for name in names:
        visit(name)
    return ordered


# --------------------------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------------------------


@dataclass
class _Worker:
    spec: WorkerSpec
    index: int
    counters: Any
    process: Any = None
    start_time: int | None = None
    crashes: int = 0
    timeouts: int = 0
    killed_for_timeout: bool = False
    gave_up: bool = False
    last_exit: int | None = None
    recent_exits: list[float] | None = None

    @property
    def role(self) -> str:
        return f"{self.spec.function.logical_id}#{self.index}"


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """While stopping, Ctrl-C and SIGTERM must not interrupt the stop itself."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda *_: logger.warning("still stopping the local stack…"))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class LocalStack:
    """Start with :meth:`start` (or ``with LocalStack(options) as stack``), stop with
    :meth:`stop`. :attr:`info` says where everything is."""

    def __init__(self, options: StackOptions | None = None) -> None:
        self.options = options or StackOptions()
        self.state_dir = self.options.state_dir.resolve()
        self.logs_dir = self.state_dir / "logs"
        self._ctx = mp.get_context("spawn")
        self._lock_fd: int | None = None
        self._server: Any = None
        self._server_start: int | None = None
        self._workers: list[_Worker] = []
        self._notes: list[str] = []
        self._monitor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._failure: str | None = None
        self._repository_bucket: str | None = None
        self._queues_by_arn: dict[str, str] = {}
        self._info: StackInfo | None = None
        self._started = False

    # context manager ------------------------------------------------------------------------
    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def info(self) -> StackInfo:
        if self._info is None:
            raise LocalStackError("the local stack is not started")
        return self._info

    @property
    def endpoint(self) -> str:
        return self.info.endpoint

    def client(self, service: str) -> Any:
        return self.info.client(service)

    # start ----------------------------------------------------------------------------------
    def start(self) -> StackInfo:
        if self._started:
            return self.info
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        self._started = True
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _acquire_lock(self) -> None:
        fd = os.open(self.state_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            running = running_stack(self.state_dir)
            where = f" at {running.endpoint} (pid {running.pid})" if running else ""
            raise StackStartError(
                f"a local stack is already running from {self.state_dir}{where}; use it, or "
                "stop it with `edgeforge dev down`") from None
        self._lock_fd = fd

    def _start(self) -> StackInfo:
        template = load_template(self.options.template)
        parameters = template.parameters(self.options.parameters)
        resolver = Resolver(template, parameters, stack_name=self.options.stack_name)
        resolver.check_rules()
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        for old in self.logs_dir.glob("*.log"):
            old.unlink()
        for stale in ("state.json", "stack.pid"):
            (self.state_dir / stale).unlink(missing_ok=True)

        port = self._start_server()
        endpoint = f"http://127.0.0.1:{port}"
        self._info = StackInfo(
            status="starting", pid=os.getpid(), pid_start_time=_proc_start_time(os.getpid()),
            started_at=datetime.now(UTC).isoformat(timespec="seconds"), endpoint=endpoint,
            port=port, region=resolver.region, account=resolver.account,
            stack_name=self.options.stack_name, template=str(template.path),
            state_dir=str(self.state_dir), parameters=parameters, resources={}, outputs={},
            functions={})
        self._repository_bucket = self._find_repository_bucket(template, resolver)
        self._create_resources(template, resolver)
        functions = self._configure_functions(template, resolver)
        for fn in functions:  # one entry per event source: Name, Name.2, …
            key, n = fn.logical_id, 1
            while key in self._info.functions:
                n += 1
                key = f"{fn.logical_id}.{n}"
            self._info.functions[key] = fn
        self._open_repository()
        self._export_public_key(functions)
        self._info.outputs = self._outputs(template, resolver)
        self._info.not_emulated = sorted(
            f"{lid} ({template.resource_type(lid)})" for lid in template.resources
            if resolver.enabled(lid)
            and template.resource_type(lid) not in (*_EMULATED, SERVERLESS_FUNCTION))
        self._info.notes = self._notes
        self._start_workers(functions, resolver)
        self._info.status = "running"
        self._write_state()
        (self.state_dir / "stack.pid").write_text(f"{os.getpid()}\n")
        self._monitor = threading.Thread(target=self._watch, name="edgeforge-local-monitor",
                                         daemon=True)
        self._monitor.start()
        logger.info("local stack running at %s", endpoint)
        return self._info

    def _start_server(self) -> int:
        import importlib.util

        if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
            raise StackStartError("the local stack runs moto's server: pip install "
                                  "'moto[server]>=5.1' (scripts/setup.sh installs it)")
        parent, child = self._ctx.Pipe(duplex=False)
        log = self.logs_dir / "moto.log"
        log.touch()
        self._server = self._ctx.Process(
            target=_serve_moto, args=(child, self.options.port, str(log), os.getpid()),
            name="edgeforge-local-moto")
        self._server.start()
        child.close()
        self._server_start = _proc_start_time(self._server.pid)
        if not parent.poll(self.options.start_timeout_s):
            raise StackStartError(f"moto's server did not start within "
                                  f"{self.options.start_timeout_s:.0f} s; see {log}")
        try:
            kind, value = parent.recv()
        except EOFError:
            raise StackStartError(f"moto's server exited at start; see {log}:\n"
                                  + _tail(log)) from None
        if kind != "ready":
            hint = " (pass another --port, or --port 0 for any free port)" if "listen" in value else ""
            raise StackStartError(f"{value}{hint}")
        return int(value)

    def _create_queue(self, name: str, attributes: dict[str, str]) -> PhysicalResource:
        sqs = self.client("sqs")
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        self._queues_by_arn[arn] = url
        return PhysicalResource("AWS::SQS::Queue", url,
                                {"Arn": arn, "QueueName": name, "QueueUrl": url})

    def _find_repository_bucket(self, template: Template, resolver: Resolver) -> str | None:
        """The bucket devices pull from: the one the functions name in
        ``EDGEFORGE_ARTIFACTS_BUCKET`` (read before anything exists: names are static)."""
        for fn in template.functions():
            value = ((template.function(fn).properties.get("Environment") or {})
                     .get("Variables") or {}).get(REPOSITORY_BUCKET_ENV)
            if isinstance(value, Mapping) and "Ref" in value:
                props = template.resources.get(str(value["Ref"]), {}).get("Properties") or {}
                with contextlib.suppress(TemplateError):
                    name = resolver.resolve(props.get("BucketName"))
                    if name:
                        return str(name)
            elif value:
                with contextlib.suppress(TemplateError):
                    return str(resolver.resolve(value))
        return None

    def _create_resources(self, template: Template, resolver: Resolver) -> None:
        assert self._info is not None
        provisioner = _Provisioner(self, resolver)
        wanted = [lid for lid, res in template.resources.items()
                  if res.get("Type") in _EMULATED and resolver.enabled(lid)]
        for lid in _topological(template, wanted):
            kind = template.resource_type(lid)
            try:
                props = resolver.resolve(template.resources[lid].get("Properties") or {})
                physical = provisioner.create(lid, kind, props)
            except TemplateError as e:
                raise StackStartError(f"cannot create {lid} ({kind}): {e}") from e
            except Exception as e:
                raise StackStartError(f"cannot create {lid} ({kind}): "
                                      f"{type(e).__name__}: {e}") from e
            resolver.resources[lid] = physical
            self._info.resources[lid] = {"type": kind, "ref": physical.ref,
                                         **({"attributes": dict(physical.attributes)}
                                            if physical.attributes else {})}
        for lid in template.functions():
            if resolver.enabled(lid):
                given = (template.resources[lid].get("Properties") or {}).get("FunctionName")
                name = str(resolver.resolve(given) if given else f"{self.options.stack_name}-{lid}")
                arn = (f"arn:{resolver.partition}:lambda:{resolver.region}:{resolver.account}:"
                       f"function:{name}")
                resolver.resources[lid] = PhysicalResource(SERVERLESS_FUNCTION, name, {"Arn": arn})

    def _configure_functions(self, template: Template, resolver: Resolver) -> list[FunctionInfo]:
        """Resolve each function's settings and wire its event sources."""
        assert self._info is not None
        prefix = str(resolver.parameters.get("ResourcePrefix") or self.options.stack_name)
        out: list[FunctionInfo] = []
        notifications: dict[str, list[dict[str, Any]]] = {}
        for lid in template.functions():
            if not resolver.enabled(lid):
                continue
            config = template.function(lid)
            try:
                props = {k: resolver.resolve(v) for k, v in config.properties.items()
                         if k in _FUNCTION_SETTINGS}
                variables = (props.get("Environment") or {}).get("Variables") or {}
            except TemplateError as e:
                raise StackStartError(f"cannot resolve {lid}'s settings: {e}") from e
            name = str(props.get("FunctionName") or resolver.resources[lid].ref)
            for arch in props.get("Architectures") or []:
                if _MACHINE.get(str(arch), str(arch)) != platform.machine():
                    self._notes.append(f"{lid}: Architectures {arch} is not emulated; its "
                                       f"workers run on this machine ({platform.machine()})")
            timeout = float(props.get("Timeout", 3))
            memory = int(props.get("MemorySize", 128))
            log = self.logs_dir / f"{lid}.log"
            log.touch()
            variables = {k: str(v) for k, v in variables.items()}
            for event_name, event in (config.properties.get("Events") or {}).items():
                kind = event.get("Type")
                try:
                    eprops = resolver.resolve(event.get("Properties") or {})
                except TemplateError as e:
                    raise StackStartError(f"cannot resolve {lid}.{event_name}: {e}") from e
                if kind == "SQS":
                    if not eprops.get("Enabled", True):
                        continue
                    arn = str(eprops["Queue"])
                    url = self._queues_by_arn.get(arn)
                    if url is None:
                        raise StackStartError(f"{lid}.{event_name}: queue {arn} is not local")
                    cap = (eprops.get("ScalingConfig") or {}).get("MaximumConcurrency")
                    source = f"SQS {arn.rsplit(':', 1)[-1]}"
                    batch = int(eprops.get("BatchSize", 10))
                    window = float(eprops.get("MaximumBatchingWindowInSeconds", 0))
                    report = "ReportBatchItemFailures" in (eprops.get("FunctionResponseTypes")
                                                           or [])
                elif kind == "S3":
                    url, arn = self._s3_event_queue(lid, props, prefix, timeout)
                    bucket = str(eprops["Bucket"])
                    events = eprops.get("Events")
                    config_entry: dict[str, Any] = {
                        "Id": f"{lid}-{event_name}", "QueueArn": arn,
                        "Events": [events] if isinstance(events, str) else list(events)}
                    rules = ((eprops.get("Filter") or {}).get("S3Key") or {}).get("Rules")
                    if rules:
                        config_entry["Filter"] = {"Key": {"FilterRules": [
                            {"Name": r["Name"], "Value": r["Value"]} for r in rules]}}
                    notifications.setdefault(bucket, []).append(config_entry)
                    cap = props.get("ReservedConcurrentExecutions")
                    source = f"S3 {bucket} → SQS {arn.rsplit(':', 1)[-1]}"
                    batch, window, report = 1, 0.0, False
                else:
                    self._notes.append(f"{lid}.{event_name}: {kind} events are not emulated")
                    continue
                concurrency = min(int(cap) if cap else self.options.max_concurrency,
                                  self.options.max_concurrency)
                out.append(FunctionInfo(
                    logical_id=lid, name=name, arn=str(resolver.resources[lid].attributes["Arn"]),
                    handler=config.handler,
                    code_root=str(config.code_root), event_source=source, queue_url=url,
                    queue_arn=arn, batch_size=batch, max_batching_window_s=window,
                    report_batch_item_failures=report, concurrency=max(concurrency, 1),
                    timeout_s=timeout, memory_mb=memory, log=str(log), environment=variables))
        s3 = self.client("s3")
        for bucket, entries in notifications.items():
            s3.put_bucket_notification_configuration(
                Bucket=bucket, NotificationConfiguration={"QueueConfigurations": entries})
        return out

    def _s3_event_queue(self, lid: str, props: Mapping[str, Any], prefix: str,
                        timeout: float) -> tuple[str, str]:
        """The queue S3 notifies in place of invoking ``lid`` asynchronously."""
        invoke = props.get("EventInvokeConfig") or {}
        attributes = {"VisibilityTimeout": str(int(max(timeout, 30))),
                      "MessageRetentionPeriod": str(int(invoke.get("MaximumEventAgeInSeconds",
                                                                   21600)))}
        dlq = props.get("DeadLetterQueue") or {}
        if dlq.get("Type", "SQS") == "SQS" and dlq.get("TargetArn"):
            attributes["RedrivePolicy"] = json.dumps({
                "deadLetterTargetArn": str(dlq["TargetArn"]),
                "maxReceiveCount": int(invoke.get("MaximumRetryAttempts", 2)) + 1})
        name = f"{prefix}-{_kebab(lid)}-events"
        physical = self._create_queue(name, attributes)
        assert self._info is not None
        self._info.resources[f"{lid}Events"] = {
            "type": "AWS::SQS::Queue", "ref": physical.ref,
            "attributes": dict(physical.attributes), "local_only": True}
        return str(physical.ref), str(physical.attributes["Arn"])

    def _function_env(self, fn: FunctionInfo) -> dict[str, str]:
        """The host environment without any AWS_* variable (no real credentials leak in;
        PATH, HOME and EDGEFORGE_PROFILES_FILE / EDGEFORGE_TUNING_DB stay), then the function's
        resolved variables, then what Lambda itself sets."""
        assert self._info is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(fn.environment)
        name, memory, handler, code_root = fn.name, fn.memory_mb, fn.handler, fn.code_root
        no_proxy = ",".join(filter(None, [env.get("NO_PROXY", ""), "127.0.0.1", "localhost"]))
        env.update({
            "AWS_ENDPOINT_URL": self._info.endpoint, "AWS_DEFAULT_REGION": self._info.region,
            "AWS_REGION": self._info.region, **DUMMY_CREDENTIALS,
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_LAMBDA_FUNCTION_NAME": name, "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{name}",
            "_HANDLER": handler, "LAMBDA_TASK_ROOT": code_root,
            # Tracing: Active has no X-Ray daemon to talk to here.
            "POWERTOOLS_TRACE_DISABLED": "true",
            "NO_PROXY": no_proxy, "no_proxy": no_proxy, "PYTHONUNBUFFERED": "1",
        })
        return env

    def _open_repository(self) -> None:
        """Let devices read ``artifacts/*`` anonymously over HTTP (read-only)."""
        assert self._info is not None
        bucket = self._repository_bucket
        if bucket is None:
            self._notes.append("no EDGEFORGE_ARTIFACTS_BUCKET: no device repository")
            return
        s3 = self.client("s3")
        statement = {"Sid": "LocalDeviceRepositoryRead", "Effect": "Allow", "Principal": "*",
                     "Action": "s3:GetObject",
                     "Resource": f"arn:aws:s3:::{bucket}/{REPOSITORY_PREFIX}*"}
        try:
            policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
        except Exception:
            policy = {"Version": "2012-10-17", "Statement": []}
        policy["Statement"] = [*policy.get("Statement", []), statement]
        s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
        self._info.repository_url = f"{self._info.endpoint}/{bucket}/{REPOSITORY_PREFIX}"
        self._notes.append(f"{bucket}: anonymous read-only access to {REPOSITORY_PREFIX}* "
                           "(the local device repository)")

    def _export_public_key(self, functions: list[FunctionInfo]) -> None:
        """GetPublicKey of the key the functions sign with → the files devices trust."""
        assert self._info is not None
        key_id = next((f.environment[SIGNING_KEY_ENV] for f in functions
                       if f.environment.get(SIGNING_KEY_ENV)), None)
        if not key_id:
            return
        from cryptography.hazmat.primitives import serialization

        der = bytes(self.client("kms").get_public_key(KeyId=key_id)["PublicKey"])
        pem = serialization.load_der_public_key(der).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        (self.state_dir / "signing-key.der").write_bytes(der)
        (self.state_dir / "signing-key.pub.pem").write_bytes(pem)
        self._info.public_key_der = str(self.state_dir / "signing-key.der")
        self._info.public_key_pem = str(self.state_dir / "signing-key.pub.pem")

    def _outputs(self, template: Template, resolver: Resolver) -> dict[str, Any]:
        out = {}
        for name, output in template.outputs.items():
            if not resolver.enabled(name):
                continue
            try:
                out[name] = resolver.resolve(output.get("Value"))
            except TemplateError as e:
                self._notes.append(f"output {name}: {e}")
        return out

    # workers --------------------------------------------------------------------------------
    def _start_workers(self, functions: list[FunctionInfo], resolver: Resolver) -> None:
        for fn in functions:
            module, _, attribute = fn.handler.rpartition(".")
            spec = WorkerSpec(function=fn, env=self._function_env(fn), module=module,
                              attribute=attribute,
                              parent_pid=os.getpid(), retry_delay_s=self.options.retry_delay_s,
                              poll_wait_s=self.options.poll_wait_s, region=resolver.region)
            for i in range(fn.concurrency):
                worker = _Worker(spec=spec, index=i,
                                 counters=self._ctx.Array("d", [0.0] * _COUNTERS, lock=False),
                                 recent_exits=[])
                self._spawn(worker)
                self._workers.append(worker)
        deadline = time.monotonic() + self.options.start_timeout_s
        for worker in self._workers:
            while not worker.counters[_READY]:
                if not worker.process.is_alive():
                    raise StackStartError(
                        f"{worker.role} ({worker.spec.function.handler}) exited at start with "
                        f"status {worker.process.exitcode}; its log "
                        f"{worker.spec.function.log}:\n{_tail(Path(worker.spec.function.log))}")
                if time.monotonic() > deadline:
                    raise StackStartError(f"{worker.role} did not become ready within "
                                          f"{self.options.start_timeout_s:.0f} s")
                time.sleep(0.05)

    def _spawn(self, worker: _Worker) -> None:
        worker.counters[_READY] = 0
        worker.counters[_BUSY_SINCE] = 0
        worker.killed_for_timeout = False
        worker.process = self._ctx.Process(target=_worker_main, args=(worker.spec, worker.counters),
                                           name=f"edgeforge-local-{worker.role}")
        worker.process.start()
        worker.start_time = _proc_start_time(worker.process.pid)

    def _watch(self) -> None:
        """Replace workers that died, kill invocations past the function's timeout, keep
        state.json current."""
        last_write = 0.0
        while not self._stopping.wait(0.25):
            if self._server is not None and not self._server.is_alive():
                self._failure = (f"moto's server exited (status {self._server.exitcode}); see "
                                 f"{self.logs_dir / 'moto.log'}")
                logger.error("%s", self._failure)
                self._write_state()
                return
            for worker in self._workers:
                self._check(worker)
            if time.monotonic() - last_write > 1.0:
                self._write_state()
                last_write = time.monotonic()

    def _check(self, worker: _Worker) -> None:
        fn = worker.spec.function
        if worker.gave_up or self._stopping.is_set():
            return
        proc = worker.process
        if not proc.is_alive():
            proc.join(0)
            worker.last_exit = proc.exitcode
            if worker.killed_for_timeout:
                logger.warning("%s: an invocation ran past the %.0f s timeout and was stopped",
                               worker.role, fn.timeout_s)
            else:
                worker.crashes += 1
                logger.error("%s crashed (exit status %s); starting a new one; see %s",
                             worker.role, proc.exitcode, fn.log)
            now = time.monotonic()
            assert worker.recent_exits is not None
            worker.recent_exits = [t for t in worker.recent_exits if now - t < 60] + [now]
            if len(worker.recent_exits) > 5:
                worker.gave_up = True
                logger.error("%s exited %d times within a minute; not restarting it",
                             worker.role, len(worker.recent_exits))
                return
            self._kill_group(proc.pid, signal.SIGKILL)
            self._spawn(worker)
            return
        busy = worker.counters[_BUSY_SINCE]
        if busy and time.time() - busy > fn.timeout_s + 2:
            worker.timeouts += 1
            worker.killed_for_timeout = True
            self._kill_group(proc.pid, signal.SIGKILL)

    @staticmethod
    def _kill_group(pgid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    # state ----------------------------------------------------------------------------------
    def _worker_status(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for w in self._workers:
            c = list(w.counters)
            out.setdefault(w.spec.function.logical_id, []).append({
                "pid": w.process.pid if w.process is not None else None,
                "alive": bool(w.process is not None and w.process.is_alive()),
                "ready": bool(c[_READY]), "busy_s": round(time.time() - c[_BUSY_SINCE], 1)
                if c[_BUSY_SINCE] else 0.0,
                "invocations": int(c[_INVOCATIONS]), "records": int(c[_RECORDS]),
                "failed_records": int(c[_FAILED_RECORDS]), "errors": int(c[_ERRORS]),
                "crashes": w.crashes, "timeouts": w.timeouts, "last_exit": w.last_exit,
                "gave_up": w.gave_up})
        return out

    def status(self) -> StackInfo:
        """The stack as it is now (workers' counters included)."""
        info = self.info.model_copy()
        info.workers = self._worker_status()
        info.failure = self._failure
        info.processes = [ProcessInfo(role="moto-server", pid=self._server.pid,
                                      start_time=self._server_start)] if self._server else []
        info.processes += [ProcessInfo(role=w.role, pid=w.process.pid, start_time=w.start_time)
                           for w in self._workers if w.process is not None]
        return info

    def crashes(self) -> int:
        return sum(w.crashes for w in self._workers)

    def _write_state(self) -> None:
        if self._info is None:
            return
        info = self.status()
        if self._failure:
            info.status = "failed"
        tmp = self.state_dir / f".state.{os.getpid()}.tmp"
        tmp.write_text(info.model_dump_json(indent=2))
        os.replace(tmp, self.state_dir / "state.json")

    def wait(self) -> None:
        """Block until the stack fails (raises) or the process is told to stop."""
        while not self._stopping.is_set():
            if self._failure:
                raise StackStartError(self._failure)
            time.sleep(0.5)

    # stop -----------------------------------------------------------------------------------
    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the workers, then the server; nothing started here survives."""
        if not self._started:
            return
        with _signals_deferred():
            self._stopping.set()
            if self._monitor is not None:
                self._monitor.join(timeout=5)
            if self._info is not None:
                self._info.status = "stopping"
                with contextlib.suppress(OSError):
                    self._write_state()
            procs = [w.process for w in self._workers if w.process is not None]
            for proc in procs:
                if proc.is_alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            for proc in procs:
                proc.join(max(0.0, deadline - time.monotonic()))
            for proc in procs:  # the worker and whatever it started (the TVM process)
                self._kill_group(proc.pid, signal.SIGKILL)
                proc.join(5)
            if self._server is not None:
                if self._server.is_alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self._server.pid, signal.SIGTERM)
                    self._server.join(5)
                self._kill_group(self._server.pid, signal.SIGKILL)
                self._server.join(5)
            for stale in ("state.json", "stack.pid"):
                with contextlib.suppress(OSError):
                    (self.state_dir / stale).unlink()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            self._started = False
            logger.info("local stack stopped")


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------------------------
# A stack started by another process
# --------------------------------------------------------------------------------------------


def running_stack(state_dir: Path) -> StackInfo | None:
    """The stack running from ``state_dir`` (in any process), or None."""
    state_dir = Path(state_dir)
    lock = state_dir / ".lock"
    if not lock.exists():
        return None
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        held = True
    else:
        held = False
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    if not held:
        return None
    try:
        return StackInfo.model_validate_json((state_dir / "state.json").read_text())
    except (OSError, ValueError):
        return None  # starting: state.json is written once everything is up


def stop_running_stack(state_dir: Path, timeout_s: float = 60.0) -> StackInfo | None:
    """Stop the stack running from ``state_dir``: SIGTERM to its supervisor, which stops its
    children; if it does not exit in time, SIGKILL it and every process it recorded (each
    checked by pid *and* start time, so a reused pid is never hit). Returns what was stopped."""
    info = running_stack(state_dir)
    if info is None:
        return None
    if _same_process(info.pid, info.pid_start_time):
        with contextlib.suppress(ProcessLookupError):
            os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if running_stack(state_dir) is None and not _same_process(info.pid, info.pid_start_time):
            return info
        time.sleep(0.2)
    logger.warning("the local stack (pid %d) did not stop in %.0f s; killing it", info.pid,
                   timeout_s)
    if _same_process(info.pid, info.pid_start_time):
        with contextlib.suppress(ProcessLookupError):
            os.kill(info.pid, signal.SIGKILL)
    for proc in info.processes:
        if _same_process(proc.pid, proc.start_time):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
    return info

"""The local embedded stack (functions/local): template.yaml on moto's standalone server on
127.0.0.1, the real Lambda handlers as worker processes polling SQS, devices pulling signed
artifacts over plain HTTP.

The template reader is tested without a stack. One stack from the real template.yaml, with
ArmCompile=true, serves the end-to-end tests (two models uploaded concurrently plus an invalid
one; real TVM compiles for x86_64 by CompileFunction and for aarch64 by CompileArmFunction, whose
worker runs on this machine's architecture: the routing is what is tested, not Graviton). The
CLI test starts the default (ArmCompile=false) stack. A second, tiny stack from a template
written here runs :func:`flaky_handler` (this module, imported by the worker) to check the event
source mapping: partial batch failures, redelivery, the DLQ after maxReceiveCount, crashed
workers replaced. The CLI test runs ``edgeforge dev up --detach / status / down`` as a user
would.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import platform
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aws_stack import ROOT, conv_relu_model

from compiler import samples
from functions.local.stack import LocalStack, StackOptions
from functions.local.template import (
    PhysicalResource,
    Resolver,
    TemplateError,
    UnresolvedError,
    load_template,
)

HERE = Path(__file__).resolve().parent
PROFILES = ["x86_64", "aarch64"]

# --------------------------------------------------------------------------------------------
# Helpers: processes and sockets
# --------------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def _tree(pids: list[int]) -> set[int]:
    seen: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo += _children(pid)
    return seen


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def _socket_inodes(pids: set[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    return inodes


def _listening() -> list[tuple[str, int, str]]:
    """(address, port, inode) of every listening TCP socket on this machine."""
    out = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            addr_hex, port_hex = fields[1].split(":")
            if v6:
                raw = bytes.fromhex(addr_hex)
                words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]
                addr = str(ipaddress.IPv6Address(b"".join(words)))
            else:
                addr = ".".join(str(b) for b in bytes.fromhex(addr_hex)[::-1])
            out.append((addr, int(port_hex, 16), fields[9]))
    return out


# --------------------------------------------------------------------------------------------
# The template reader
# --------------------------------------------------------------------------------------------

_SMALL = """
Parameters:
  Prefix: {Type: String, Default: demo, AllowedPattern: "^[a-z]+$"}
  Size: {Type: Number, Default: 3, MinValue: 1, MaxValue: 5}
  Mode: {Type: String, Default: "off", AllowedValues: ["on", "off"]}
  Ids: {Type: CommaDelimitedList, Default: "a,b,c"}
Conditions:
  IsOn: !Equals [!Ref Mode, "on"]
  IsOff: !Not [!Condition IsOn]
Resources:
  Queue:
    Type: AWS::SQS::Queue
    Properties:
      QueueName: !Sub "${Prefix}-q-${AWS::Region}"
      Tags: !If [IsOn, !Ref Missing, !Ref AWS::NoValue]
  Other:
    Type: AWS::SQS::Queue
    Properties:
      Name: !Join ["-", [!Select [1, !Ref Ids], !GetAtt Queue.Arn, "${!Literal}"]]
      Literal: !Sub "${!Literal} ${Queue.QueueName} ${AWS::AccountId}"
      Split: !Select [0, !Split [",", "x,y"]]
"""


def test_short_tags_and_intrinsics(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(_SMALL)
    template = load_template(path)
    assert template.resources["Queue"]["Properties"]["QueueName"] == {
        "Fn::Sub": "${Prefix}-q-${AWS::Region}"}
    assert template.resources["Other"]["Properties"]["Name"]["Fn::Join"][1][1] == {
        "Fn::GetAtt": ["Queue", "Arn"]}
    params = template.parameters()
    assert params == {"Prefix": "demo", "Size": "3", "Mode": "off", "Ids": ["a", "b", "c"]}
    resolver = Resolver(template, params)
    assert resolver.condition("IsOff") and not resolver.condition("IsOn")
    # !If is lazy (the branch naming a missing resource is not evaluated), NoValue disappears
    assert resolver.resolve(template.resources["Queue"]["Properties"]) == {
        "QueueName": "demo-q-us-east-1"}
    with pytest.raises(UnresolvedError, match="Queue"):
        resolver.resolve(template.resources["Other"]["Properties"])
    resolver.resources["Queue"] = PhysicalResource(
        "AWS::SQS::Queue", "http://q", {"Arn": "arn:aws:sqs:us-east-1:123456789012:demo-q",
                                        "QueueName": "demo-q-us-east-1"})
    assert resolver.resolve(template.resources["Other"]["Properties"]) == {
        "Name": "b-arn:aws:sqs:us-east-1:123456789012:demo-q-${!Literal}",
        "Literal": "${Literal} demo-q-us-east-1 123456789012", "Split": "x"}
    assert template.dependencies("Other") == {"Queue"}
    with pytest.raises(TemplateError, match="Size=9 is above 5"):
        template.parameters({"Size": "9"})
    with pytest.raises(TemplateError, match="not one of"):
        template.parameters({"Mode": "maybe"})
    with pytest.raises(TemplateError, match="unknown parameter"):
        template.parameters({"Nope": "1"})


def test_functions_and_their_environment_come_from_template_yaml() -> None:
    template = load_template(ROOT / "template.yaml")
    assert sorted(template.functions()) == ["CompileArmFunction", "CompileFunction",
                                            "IngestFunction"]
    # the arm64 compile function exists with ArmCompile=true only
    assert not Resolver(template, template.parameters()).enabled("CompileArmFunction")
    assert Resolver(template, template.parameters({"ArmCompile": "true"})).enabled(
        "CompileArmFunction")
    assert template.function("CompileArmFunction").handler == "functions.compile.app.lambda_handler"
    ingest, compile_ = template.function("IngestFunction"), template.function("CompileFunction")
    assert ingest.handler == "functions.ingest.app.lambda_handler"
    assert compile_.handler == "functions.compile.app.lambda_handler"  # the Dockerfile's CMD
    assert ingest.code_root == compile_.code_root == ROOT
    # Globals + the function's own variables
    ingest_env = ingest.properties["Environment"]["Variables"]
    assert {"EDGEFORGE_MODELS_BUCKET", "EDGEFORGE_JOBS_TABLE", "EDGEFORGE_TOPIC_ARN",
            "EDGEFORGE_COMPILE_QUEUE_URL", "EDGEFORGE_DEFAULT_PROFILES"} <= set(ingest_env)
    assert "EDGEFORGE_KMS_KEY_ID" in compile_.properties["Environment"]["Variables"]
    # the template's Rules are enforced as CloudFormation would
    params = template.parameters({"EnableBatch": "true"})
    with pytest.raises(TemplateError, match="BatchImageUri"):
        Resolver(template, params).check_rules()


# --------------------------------------------------------------------------------------------
# The stack from template.yaml, end to end
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    state = tmp_path_factory.mktemp("devstack")
    stack = LocalStack(StackOptions(state_dir=state, port=0, max_concurrency=2, retry_delay_s=1,
                                    parameters={"ArmCompile": "true"}))
    stack.start()
    try:
        yield stack
    finally:
        pids = _tree([p.pid for p in stack.status().processes])
        stack.stop()
    assert not [p for p in pids if _alive(p)], "processes of the stack outlived it"
    assert not (state / "stack.pid").exists() and not (state / "state.json").exists()


def test_listens_on_127_0_0_1_only(local_stack: LocalStack) -> None:
    info = local_stack.status()
    port = info.port
    server = [s for s in _listening() if s[1] == port]
    assert server and {s[0] for s in server} == {"127.0.0.1"}
    assert info.endpoint == f"http://127.0.0.1:{port}"
    # no process of the stack (server, workers, TVM processes) listens anywhere else
    ours = _socket_inodes(_tree([p.pid for p in info.processes]))
    assert {(a, p) for a, p, inode in _listening() if inode in ours} == {("127.0.0.1", port)}


def test_resources_are_those_of_the_template(local_stack: LocalStack) -> None:
    info = local_stack.info
    sqs, kms, s3 = (local_stack.client(s) for s in ("sqs", "kms", "s3"))
    res = info.resources
    compile_q = sqs.get_queue_attributes(QueueUrl=res["CompileQueue"]["ref"],
                                         AttributeNames=["All"])["Attributes"]
    assert compile_q["VisibilityTimeout"] == "5400"
    assert json.loads(compile_q["RedrivePolicy"]) == {
        "deadLetterTargetArn": res["CompileDeadLetterQueue"]["attributes"]["Arn"],
        "maxReceiveCount": 3}
    # ArmCompile=true: the arm64 queue, the same settings and the same DLQ
    arm_q = sqs.get_queue_attributes(QueueUrl=res["CompileArmQueue"]["ref"],
                                     AttributeNames=["All"])["Attributes"]
    assert arm_q["QueueArn"].endswith(":edgeforge-compile-arm64")
    assert (arm_q["VisibilityTimeout"], arm_q["RedrivePolicy"]) == (
        compile_q["VisibilityTimeout"], compile_q["RedrivePolicy"])
    # S3 → SQS stands for S3 → Lambda: retries end in the function's DLQ, after 2 + 1 receives
    events_q = sqs.get_queue_attributes(QueueUrl=res["IngestFunctionEvents"]["ref"],
                                        AttributeNames=["All"])["Attributes"]
    assert json.loads(events_q["RedrivePolicy"]) == {
        "deadLetterTargetArn": res["IngestDeadLetterQueue"]["attributes"]["Arn"],
        "maxReceiveCount": 3}
    models = info.outputs["ModelsBucketName"]
    assert models == "edgeforge-models-123456789012-us-east-1"
    [notify] = s3.get_bucket_notification_configuration(Bucket=models)["QueueConfigurations"]
    assert notify["QueueArn"] == res["IngestFunctionEvents"]["attributes"]["Arn"]
    assert {r["Name"].lower(): r["Value"] for r in notify["Filter"]["Key"]["FilterRules"]} == {
        "prefix": "models/", "suffix": ".onnx"}
    assert s3.get_bucket_versioning(Bucket=models)["Status"] == "Enabled"
    key = kms.describe_key(KeyId=info.outputs["SigningKeyAlias"])["KeyMetadata"]
    assert (key["KeySpec"], key["KeyUsage"]) == ("ECC_NIST_P256", "SIGN_VERIFY")
    assert key["Arn"] == info.outputs["SigningKeyArn"]
    # the functions get the template's variables, resolved
    ingest, compile_ = info.functions["IngestFunction"], info.functions["CompileFunction"]
    arm = info.functions["CompileArmFunction"]
    assert ingest.environment["EDGEFORGE_COMPILE_QUEUE_URL"] == res["CompileQueue"]["ref"]
    assert ingest.environment["EDGEFORGE_ARM_COMPILE_QUEUE_URL"] == res["CompileArmQueue"]["ref"]
    assert (compile_.queue_url, arm.queue_url) == (res["CompileQueue"]["ref"],
                                                   res["CompileArmQueue"]["ref"])
    assert arm.environment == compile_.environment and arm.handler == compile_.handler
    # every worker runs on this machine: a function of another architecture is noted
    machine = {"IngestFunction": "x86_64", "CompileFunction": "x86_64",
               "CompileArmFunction": "aarch64"}
    assert {n.split(":")[0] for n in info.notes if "Architectures" in n} == {
        fn for fn, arch in machine.items() if arch != platform.machine()}
    assert ingest.environment["EDGEFORGE_DEFAULT_PROFILES"] == "x86_64,aarch64"
    assert compile_.environment["EDGEFORGE_KMS_KEY_ID"] == key["Arn"]
    assert compile_.environment["EDGEFORGE_BATCH_JOB_QUEUE"] == ""
    assert (compile_.batch_size, compile_.report_batch_item_failures) == (1, True)
    assert Path(info.public_key_der).read_bytes() == kms.get_public_key(
        KeyId=key["Arn"])["PublicKey"]


def _report(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=key + ".report.json")["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def _done(report: dict[str, Any] | None) -> bool:
    if report is None:
        return False
    if report["status"] == "rejected":
        return True
    statuses = [p["status"] for p in report.get("profiles", {}).values()]
    return bool(statuses) and all(s in ("ok", "failed") for s in statuses)


def test_two_models_at_once_and_an_invalid_one(local_stack: LocalStack, tmp_path: Path) -> None:
    import onnxruntime as ort

    from edgeforge_runtime import InferenceSession, TrustedKeys
    from edgeforge_runtime.client import RepositoryClient

    info = local_stack.info
    s3 = local_stack.client("s3")
    bucket, artifacts = info.outputs["ModelsBucketName"], info.outputs["ArtifactsBucketName"]
    models = {"models/alpha/alpha.onnx": samples.tiny_cnn(size=8, channels=4, seed=1),
              "models/beta/beta.onnx": conv_relu_model(seed=2),
              "models/broken/broken.onnx": b"this is not an ONNX model"}

    def upload(key: str) -> None:
        if key.startswith("models/alpha"):  # a spec sidecar for one; the defaults for the other
            s3.put_object(Bucket=bucket, Key=key + ".spec.json",
                          Body=json.dumps({"profiles": PROFILES}).encode())
        s3.put_object(Bucket=bucket, Key=key, Body=models[key])

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(upload, models))
    deadline = time.monotonic() + 300
    reports: dict[str, Any] = {}
    while time.monotonic() < deadline and not all(_done(reports.get(k)) for k in models):
        reports = {k: _report(s3, bucket, k) for k in models}
        time.sleep(1)
    assert all(_done(reports.get(k)) for k in models), reports

    # the invalid model: rejected, with a report next to it saying why
    broken = reports["models/broken/broken.onnx"]
    assert broken["status"] == "rejected" and broken["error"]["code"] == "not_onnx"
    assert broken["error"]["message"]

    der = Path(info.public_key_der).read_bytes()
    keyid = hashlib.sha256(der).hexdigest()
    for key, name in (("models/alpha/alpha.onnx", "alpha"), ("models/beta/beta.onnx", "beta")):
        report = reports[key]
        assert report["status"] == "accepted" and report["model"] == name
        assert {p: s["status"] for p, s in report["profiles"].items()} == dict.fromkeys(
            PROFILES, "ok"), report
        for profile in PROFILES:
            assert s3.head_object(Bucket=artifacts, Key=f"artifacts/{name}/1/{profile}.efa")
            # a device: plain HTTP, no credentials, trusting only the KMS public key (DER)
            client = RepositoryClient(info.repository_url, [info.public_key_der], profile,
                                      tmp_path / "device")
            path = client.update(name)
            assert path.name == f"{name}-1-{profile}.efa" and client.trusted_version(name) == 1
            assert hashlib.sha256(path.read_bytes()).hexdigest() == report["profiles"][profile][
                "sha256"]
            if profile == "x86_64":
                sess = InferenceSession(path, trusted_keys=TrustedKeys.load([der]),
                                        expected_profile="x86_64")
                assert sess.signed_by == [keyid]
                feed = {i.name: np.random.default_rng(0).standard_normal(i.shape).astype(i.dtype)
                        for i in sess.get_inputs()}
                expected = ort.InferenceSession(models[key], providers=[
                    "CPUExecutionProvider"]).run(None, feed)
                for got, want in zip(sess.run(None, feed), expected):
                    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

    # anonymous reads reach the device repository only
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(f"{info.endpoint}/{bucket}/models/alpha/alpha.onnx.report.json")
    assert denied.value.code == 403
    # nothing was retried or dead-lettered, and no worker crashed
    sqs = local_stack.client("sqs")
    for dlq in ("CompileDeadLetterQueue", "IngestDeadLetterQueue"):
        attrs = sqs.get_queue_attributes(QueueUrl=info.resources[dlq]["ref"], AttributeNames=[
            "ApproximateNumberOfMessages"])["Attributes"]
        assert attrs["ApproximateNumberOfMessages"] == "0"
    workers = local_stack.status().workers
    assert local_stack.crashes() == 0
    for fn, procs in workers.items():
        assert all(w["alive"] and w["errors"] == 0 and w["timeouts"] == 0 for w in procs), (
            fn, procs)
    # x86_64 by the compile function, aarch64 by the arm64 one (ArmCompile=true)
    assert sum(w["records"] for w in workers["CompileFunction"]) == 2
    assert sum(w["records"] for w in workers["CompileArmFunction"]) == 2
    assert sum(w["failed_records"] for fn in ("CompileFunction", "CompileArmFunction")
               for w in workers[fn]) == 0


# --------------------------------------------------------------------------------------------
# The event source mapping, with a handler of this module
# --------------------------------------------------------------------------------------------


def flaky_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Runs in a local worker: ``fail`` → a batch item failure, ``crash`` → the process dies,
    anything else → echoed to the results queue with what the function's environment says."""
    import boto3

    sqs = boto3.client("sqs")
    failures = []
    for record in event["Records"]:
        body = record["body"]
        if body == "crash":
            os._exit(3)
        if body == "fail":
            failures.append({"itemIdentifier": record["messageId"]})
            continue
        sqs.send_message(QueueUrl=os.environ["RESULTS_QUEUE"], MessageBody=json.dumps({
            "body": body, "batch": len(event["Records"]),
            "receives": record["attributes"]["ApproximateReceiveCount"],
            "function": os.environ.get("AWS_LAMBDA_FUNCTION_NAME"),
            "remaining_ms": context.get_remaining_time_in_millis(),
            "endpoint": os.environ.get("AWS_ENDPOINT_URL"),
            "key": os.environ.get("AWS_ACCESS_KEY_ID")}))
    return {"batchItemFailures": failures}


_FLAKY = f"""
Transform: AWS::Serverless-2016-10-31
Resources:
  Jobs:
    Type: AWS::SQS::Queue
    Properties:
      QueueName: flaky-jobs
      VisibilityTimeout: 2
      RedrivePolicy:
        deadLetterTargetArn: !GetAtt JobsDlq.Arn
        maxReceiveCount: 2
  JobsDlq:
    Type: AWS::SQS::Queue
    Properties: {{QueueName: flaky-jobs-dlq}}
  Results:
    Type: AWS::SQS::Queue
    Properties: {{QueueName: flaky-results}}
  Flaky:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: {HERE}
      Handler: test_local_stack.flaky_handler
      Timeout: 30
      Environment:
        Variables:
          RESULTS_QUEUE: !Ref Results
      Events:
        Jobs:
          Type: SQS
          Properties:
            Queue: !GetAtt Jobs.Arn
            BatchSize: 5
            MaximumBatchingWindowInSeconds: 1
            FunctionResponseTypes: [ReportBatchItemFailures]
            ScalingConfig: {{MaximumConcurrency: 2}}
"""


def _drain(sqs: Any, url: str, want: int, timeout_s: float = 60) -> list[str]:
    bodies: list[str] = []
    deadline = time.monotonic() + timeout_s
    while len(bodies) < want and time.monotonic() < deadline:
        for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                     WaitTimeSeconds=1).get("Messages", []):
            bodies.append(m["Body"])
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    return bodies


def test_partial_batch_failures_redelivery_dlq_and_crashes(tmp_path: Path) -> None:
    template = tmp_path / "flaky.yaml"
    template.write_text(_FLAKY)
    options = StackOptions(template=template, state_dir=tmp_path / "state", port=0,
                           max_concurrency=1, retry_delay_s=1)
    with LocalStack(options) as stack:
        res = stack.info.resources
        sqs = stack.client("sqs")
        jobs, dlq, results = (res[n]["ref"] for n in ("Jobs", "JobsDlq", "Results"))
        sqs.send_message_batch(QueueUrl=jobs, Entries=[
            {"Id": str(i), "MessageBody": b} for i, b in enumerate(["one", "fail", "two"])])
        echoed = [json.loads(b) for b in _drain(sqs, results, 2)]
        assert sorted(e["body"] for e in echoed) == ["one", "two"]
        e = echoed[0]
        assert e["function"] == "edgeforge-local-Flaky" and e["key"] == "test"
        assert e["endpoint"] == stack.endpoint and 0 < e["remaining_ms"] <= 30_000
        # only the failed item came back, twice (maxReceiveCount 2), then went to the DLQ
        assert _drain(sqs, dlq, 1, timeout_s=30) == ["fail"]
        assert _drain(sqs, results, 1, timeout_s=3) == []  # "one"/"two" were not redelivered
        flaky = stack.status().workers["Flaky"]
        assert sum(w["failed_records"] for w in flaky) == 2
        assert stack.crashes() == 0

        # a worker that dies is replaced; its message comes back and, dying again, is dead-lettered
        sqs.send_message(QueueUrl=jobs, MessageBody="crash")
        assert _drain(sqs, dlq, 1, timeout_s=60) == ["crash"]
        assert stack.crashes() == 2
        sqs.send_message(QueueUrl=jobs, MessageBody="after")
        assert [json.loads(b)["body"] for b in _drain(sqs, results, 1)] == ["after"]
        assert all(w["alive"] for w in stack.status().workers["Flaky"])


# --------------------------------------------------------------------------------------------
# The CLI: dev up --detach / status / down
# --------------------------------------------------------------------------------------------


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "compiler.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, check=False)


def test_dev_up_detached_status_and_down(tmp_path: Path) -> None:
    state = str(tmp_path / "devstack")
    up = _cli("dev", "up", "--detach", "--port", "0", "--state-dir", state,
              "--max-concurrency", "1")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "export AWS_ENDPOINT_URL=http://127.0.0.1:" in up.stdout
    try:
        status = _cli("dev", "status", "--json", "--state-dir", state)
        assert status.returncode == 0, status.stderr
        info = json.loads(status.stdout)
        assert info["status"] == "running" and info["endpoint"].startswith("http://127.0.0.1:")
        assert info["client_env"]["AWS_ENDPOINT_URL"] == info["endpoint"]
        assert set(info["queues"]) >= {"edgeforge-compile", "edgeforge-ingest-events"}
        # the default ArmCompile=false: no arm64 queue or function, ingest knows none
        assert "edgeforge-compile-arm64" not in info["queues"]
        assert set(info["functions"]) == {"IngestFunction", "CompileFunction"}
        assert info["functions"]["IngestFunction"]["environment"][
            "EDGEFORGE_ARM_COMPILE_QUEUE_URL"] == ""
        pids = _tree([info["pid"]])
        assert len(pids) >= 4  # supervisor, moto, one worker per function
        again = _cli("dev", "up", "--detach", "--port", "0", "--state-dir", state)
        assert again.returncode == 0 and "already running" in again.stdout
        env = _cli("dev", "env", "--state-dir", state)
        assert f"export AWS_ENDPOINT_URL={info['endpoint']}" in env.stdout
    finally:
        down = _cli("dev", "down", "--state-dir", state)
    assert down.returncode == 0 and "stopped the local stack" in down.stdout, down.stderr
    assert not [p for p in pids if _alive(p)]
    after = _cli("dev", "status", "--state-dir", state)
    assert after.returncode == 1 and "no local stack is running" in after.stdout
    assert _cli("dev", "down", "--state-dir", state).returncode == 0  # idempotent

"""A moto-backed copy of the template's resources with the two Lambda handlers loaded against it.

Everything runs in-process under ``moto.mock_aws``: no network, no Docker, no AWS account.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_stack import (
    _PROFILES_FILE,
    ARTIFACTS_BUCKET,
    MODELS_BUCKET,
    REGION,
    TABLE,
    Stack,
    fix_moto_kms,
)

moto = pytest.importorskip("moto")


def _import_fresh(name: str) -> Any:
    if name in sys.modules:
        return importlib.reload(sys.modules[name])
    return importlib.import_module(name)


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Stack]:
    """The template's default: one compile queue for every profile (ArmCompile=false)."""
    yield from _stack(monkeypatch, tmp_path, arm=False)


@pytest.fixture
def arm_stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Stack]:
    """ArmCompile=true: a second compile queue, for the arm64 compile function."""
    yield from _stack(monkeypatch, tmp_path, arm=True)


def _stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, arm: bool) -> Iterator[Stack]:
    for var, value in {
        "AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
        "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_DEV": "false",
        "POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true",
    }.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    profiles_file = tmp_path / "profiles.json"
    profiles_file.write_text(json.dumps(_PROFILES_FILE))
    monkeypatch.setenv("EDGEFORGE_PROFILES_FILE", str(profiles_file))

    with moto.mock_aws():
        fix_moto_kms(monkeypatch)
        s3, sqs = boto3.client("s3"), boto3.client("sqs")
        ddb, sns, kms = boto3.client("dynamodb"), boto3.client("sns"), boto3.client("kms")
        for bucket in (MODELS_BUCKET, ARTIFACTS_BUCKET):
            s3.create_bucket(Bucket=bucket)
            s3.put_bucket_versioning(Bucket=bucket,
                                     VersioningConfiguration={"Status": "Enabled"})
        # The compile queue mirrors template.yaml: DLQ after 3 receives.
        dlq = sqs.create_queue(QueueName="edgeforge-compile-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        compile_q, arm_q = (sqs.create_queue(QueueName=name, Attributes={
            "VisibilityTimeout": "5400",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 3}),
        })["QueueUrl"] for name in ("edgeforge-compile", "edgeforge-compile-arm64"))
        # S3 → SQS, as the local stack wires it (in AWS, S3 invokes the ingest function).
        uploads = sqs.create_queue(QueueName="edgeforge-uploads")["QueueUrl"]
        uploads_arn = sqs.get_queue_attributes(QueueUrl=uploads, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        s3.put_bucket_notification_configuration(Bucket=MODELS_BUCKET, NotificationConfiguration={
            "QueueConfigurations": [{
                "QueueArn": uploads_arn, "Events": ["s3:ObjectCreated:*"],
                "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "models/"},
                                                   {"Name": "suffix", "Value": ".onnx"}]}},
            }]})
        ddb.create_table(TableName=TABLE, BillingMode="PAY_PER_REQUEST",
                         AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                               {"AttributeName": "sk", "AttributeType": "S"}],
                         KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                                    {"AttributeName": "sk", "KeyType": "RANGE"}])
        topic = sns.create_topic(Name="edgeforge-notifications")["TopicArn"]
        captured = sqs.create_queue(QueueName="notifications-capture")["QueueUrl"]
        captured_arn = sqs.get_queue_attributes(QueueUrl=captured, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=captured_arn)
        key_id = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY",
                                Description="edgeforge artifact signing")["KeyMetadata"]["KeyId"]

        for var, value in {
            "MODELS_BUCKET": MODELS_BUCKET, "ARTIFACTS_BUCKET": ARTIFACTS_BUCKET,
            "JOBS_TABLE": TABLE, "TOPIC_ARN": topic, "COMPILE_QUEUE_URL": compile_q,
            # as template.yaml sets it: the arm64 queue's URL, or "" without ArmCompile
            "ARM_COMPILE_QUEUE_URL": arm_q if arm else "",
            "KMS_KEY_ID": key_id, "DEFAULT_PROFILES": "x86_64",
            "TIMEOUT_S": "600", "MEMORY_LIMIT_MB": "8192",
        }.items():
            monkeypatch.setenv(f"EDGEFORGE_{var}", value)
        ingest = _import_fresh("functions.ingest.app")
        compile_app = _import_fresh("functions.compile.app")
        yield Stack(s3=s3, sqs=sqs, ddb=ddb, sns=sns, kms=kms, key_id=key_id,
                    uploads_queue=uploads, compile_queue=compile_q, arm_compile_queue=arm_q,
                    dlq=dlq,
                    notifications_queue=captured, topic_arn=topic, ingest=ingest,
                    compile=compile_app)


@pytest.fixture
def compiling_stack(stack: Stack, worker: Any, monkeypatch: pytest.MonkeyPatch) -> Stack:
    """The stack with the session's warm compile worker (tests/conftest.py) injected into the
    compile function, so ``import tvm`` is paid once per test session."""
    monkeypatch.setattr(stack.compile.runner, "worker", worker)
    return stack

"""Helpers for the functional tests: names mirroring template.yaml, the sample events, a tiny
model, a fake Lambda context, the moto KMS correction, and :class:`Stack`, which plays the parts
of S3, SQS and Lambda (delivering notifications, invoking handlers)."""

from __future__ import annotations

import copy
import hashlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account, the one the sample events name
MODELS_BUCKET = f"edgeforge-models-{ACCOUNT}-{REGION}"
ARTIFACTS_BUCKET = f"edgeforge-artifacts-{ACCOUNT}-{REGION}"
TABLE = "edgeforge-jobs"
MISSING_TOOLCHAIN_PROFILE = "x86_64-missing-cc"
_PROFILES_FILE = {"profiles": [{
    "name": MISSING_TOOLCHAIN_PROFILE, "revision": 1,
    "description": "x86-64 linked with a compiler that is not installed (tests)",
    "arch": "x86_64", "device": "cpu",
    "target": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v2"},
    "toolchain": {"cc": "edgeforge-test-no-such-g++"}, "verify": "native",
    "runtime_platform": "manylinux_2_28_x86_64",
}]}


def load_event(name: str) -> dict[str, Any]:
    """A sample event from events/ (the files ``sam local invoke -e`` uses)."""
    return json.loads((EVENTS / name).read_text("utf-8"))


def conv_relu_model(seed: int = 0) -> bytes:
    """input [1,3,8,8] → Conv 3x3 (4 channels) → Relu, built in code (no downloads)."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["output"], name="relu")],
        "conv_relu",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 8, 8])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="edgeforge-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


class FakeContext:
    """The parts of ``LambdaContext`` the handlers and powertools read."""

    def __init__(self, name: str, remaining_s: float = 900.0) -> None:
        self.function_name = name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = 3008
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{name}"
        self.log_stream_name = "test"
        self._remaining_ms = int(remaining_s * 1000)

    def get_remaining_time_in_millis(self) -> int:
        return self._remaining_ms


def fix_moto_kms(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make moto's KMS Sign behave like KMS for the two cases the signer depends on.

    moto 5 ignores ``MessageType``: a DIGEST is hashed once more, so the signature covers
    sha256(sha256(manifest)) and no verifier accepts it, where KMS signs the given digest. And it
    accepts RAW messages over KMS's 4096-byte limit, so a signer that forgot the limit would pass
    here and fail in AWS. This patch signs DIGEST messages as prehashed and refuses RAW ones over
    4096 bytes, exactly as the KMS API reference describes."""
    from moto.kms.responses import KmsResponse

    from functions.local.stack import kms_sign_like_aws

    monkeypatch.setattr(KmsResponse, "sign", kms_sign_like_aws(KmsResponse.sign))


@dataclass
class Stack:
    """The moto resources plus the loaded handler modules."""

    s3: Any
    sqs: Any
    ddb: Any
    sns: Any
    kms: Any
    key_id: str
    uploads_queue: str
    compile_queue: str
    #: The arm64 compile function's queue (it exists either way; ingest knows it only in
    #: the ``arm_stack`` fixture, as with ArmCompile=true).
    arm_compile_queue: str
    dlq: str
    notifications_queue: str
    topic_arn: str
    ingest: Any  # functions.ingest.app
    compile: Any  # functions.compile.app

    # -- S3 side ---------------------------------------------------------------------------
    def upload(self, key: str, data: bytes, spec: dict[str, Any] | None = None) -> dict[str, Any]:
        if spec is not None:  # the sidecar goes first: the model upload is the trigger
            self.s3.put_object(Bucket=MODELS_BUCKET, Key=key + ".spec.json",
                               Body=json.dumps(spec).encode())
        return self.s3.put_object(Bucket=MODELS_BUCKET, Key=key, Body=data)

    def s3_events(self) -> list[dict[str, Any]]:
        """Drain the S3 → SQS notification queue: the S3 events moto delivered (bodies), the
        ``s3:TestEvent`` included."""
        events = []
        for m in self._drain(self.uploads_queue):
            events.append(json.loads(m["Body"]))
        return events

    def get_json(self, bucket: str, key: str) -> dict[str, Any]:
        return json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        resp = self.s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for o in resp.get("Contents", []))

    # -- Lambda side -----------------------------------------------------------------------
    def run_ingest(self, event: dict[str, Any]) -> dict[str, Any]:
        return self.ingest.lambda_handler(event, FakeContext("edgeforge-ingest"))

    def compile_messages(self) -> list[dict[str, Any]]:
        return self._drain(self.compile_queue)

    def arm_compile_messages(self) -> list[dict[str, Any]]:
        return self._drain(self.arm_compile_queue)

    def sqs_event(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """Lambda's SQS event for received messages, shaped like events/compile-sqs.json."""
        template = load_event("compile-sqs.json")["Records"][0]
        records = []
        for m in messages:
            r = copy.deepcopy(template)
            r.update(messageId=m["MessageId"], receiptHandle=m["ReceiptHandle"], body=m["Body"],
                     md5OfBody=hashlib.md5(m["Body"].encode()).hexdigest(),
                     eventSourceARN=f"arn:aws:sqs:{REGION}:{ACCOUNT}:edgeforge-compile")
            records.append(r)
        return {"Records": records}

    def run_compile(self, messages: list[dict[str, Any]], remaining_s: float = 900.0
                    ) -> dict[str, Any]:
        return self.compile.lambda_handler(self.sqs_event(messages),
                                           FakeContext("edgeforge-compile", remaining_s))

    def notifications(self) -> list[dict[str, Any]]:
        """SNS notifications published so far (delivered to a subscribed SQS queue)."""
        return [json.loads(json.loads(m["Body"])["Message"])
                for m in self._drain(self.notifications_queue)]

    def receive(self, url: str, visibility_s: int = 30) -> list[dict[str, Any]]:
        """Receive (without deleting) what the queue has now."""
        out: list[dict[str, Any]] = []
        while True:
            batch = self.sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=visibility_s,
                WaitTimeSeconds=0, AttributeNames=["ApproximateReceiveCount"]).get("Messages", [])
            if not batch:
                return out
            out += batch

    def _drain(self, url: str) -> list[dict[str, Any]]:
        out = self.receive(url)
        for m in out:
            self.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        return out

"""The whole flow with real TVM compiles: S3 upload → S3→SQS notification → ingest → compile
messages → compile function → KMS-signed artifact → device runtime verifies it with the KMS
public key (DER) and runs it, matching onnxruntime."""

from __future__ import annotations

import hashlib
import platform

import numpy as np
import onnxruntime as ort
import pytest
from aws_stack import (
    ARTIFACTS_BUCKET,
    MISSING_TOOLCHAIN_PROFILE,
    MODELS_BUCKET,
    TABLE,
    Stack,
    conv_relu_model,
)

from compiler.jobs import CompileMessage
from edgeforge_runtime import InferenceSession, TrustedKeys, UntrustedKeyError, read_manifest
from edgeforge_runtime.client import FetcherInterface, RepositoryClient


def _ingest(stack: Stack, key: str, data: bytes, spec: dict) -> list[dict]:
    stack.upload(key, data, spec)
    events = [e for e in stack.s3_events() if "Records" in e]
    assert len(events) == 1
    [outcome] = stack.run_ingest(events[0])["outcomes"]
    assert outcome["status"] == "accepted", outcome
    return stack.compile_messages()


def _job(stack: Stack, name: str, version: int, profile: str) -> dict:
    item = stack.ddb.get_item(TableName=TABLE, Key={
        "pk": {"S": f"MODEL#{name}"}, "sk": {"S": f"JOB#{version:010d}#{profile}"}})["Item"]
    return {k: next(iter(v.values())) for k, v in item.items()}


def test_upload_to_signed_artifacts_that_run(compiling_stack: Stack, tmp_path):
    stack = compiling_stack
    data = conv_relu_model()
    key = "models/tiny/tiny.onnx"
    messages = _ingest(stack, key, data, {"profiles": ["x86_64", "aarch64"]})
    assert len(messages) == 2

    response = stack.run_compile(messages)  # one batch, two records
    assert response == {"batchItemFailures": []}

    assert stack.keys(ARTIFACTS_BUCKET) == [
        "artifacts/tiny/1/aarch64.efa", "artifacts/tiny/1/aarch64.report.json",
        "artifacts/tiny/1/x86_64.efa", "artifacts/tiny/1/x86_64.report.json",
        "artifacts/tiny/aarch64/index.json", "artifacts/tiny/x86_64/index.json"]

    # the device trusts exactly the DER public key KMS hands out
    der = stack.kms.get_public_key(KeyId=stack.key_id)["PublicKey"]
    trusted = TrustedKeys.load([der])
    local = tmp_path / "tiny-x86_64.efa"
    local.write_bytes(stack.s3.get_object(Bucket=ARTIFACTS_BUCKET,
                                          Key="artifacts/tiny/1/x86_64.efa")["Body"].read())
    sess = InferenceSession(local, trusted_keys=trusted, expected_profile="x86_64")
    assert sess.signed_by == [hashlib.sha256(der).hexdigest()]
    assert sess.get_modelmeta()["version"] == "1"
    assert sess.manifest.model.source_sha256 == hashlib.sha256(data).hexdigest()
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    [y] = sess.run(None, {"input": x})
    [expected] = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(
        None, {"input": x})
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    assert sess.manifest.verification.verified and sess.manifest.verification.method == "native"

    # a device pulls through the signed repository index (no AWS credentials involved)
    class S3Fetcher(FetcherInterface):
        def fetch(self, url: str, max_bytes: int) -> bytes:
            key = "artifacts/" + url.removeprefix("s3repo://artifacts/")
            return stack.s3.get_object(Bucket=ARTIFACTS_BUCKET, Key=key)["Body"].read()

    client = RepositoryClient("s3repo://artifacts/", trusted, "x86_64", tmp_path / "cache",
                              fetcher=S3Fetcher())
    pulled = client.update("tiny")
    assert pulled.read_bytes() == local.read_bytes() and client.trusted_version("tiny") == 1

    # aarch64: signed and well-formed; verified under qemu only where the sysroot exists
    arm = tmp_path / "tiny-aarch64.efa"
    arm.write_bytes(stack.s3.get_object(Bucket=ARTIFACTS_BUCKET,
                                        Key="artifacts/tiny/1/aarch64.efa")["Body"].read())
    manifest, _, _ = read_manifest(arm)
    assert manifest.profile.arch == "aarch64"
    v = manifest.verification
    assert v.verified == (v.method == "qemu-user")
    if not v.verified:
        assert v.reason  # says why (qemu or the arm64 sysroot missing)
    with pytest.raises(UntrustedKeyError):
        InferenceSession(arm, trusted_keys=[_other_key_der()])

    # records, reports and notifications
    for profile in ("x86_64", "aarch64"):
        job = _job(stack, "tiny", 1, profile)
        assert job["status"] == "ok" and job["artifact"] == f"artifacts/tiny/1/{profile}.efa"
        head = stack.s3.head_object(Bucket=ARTIFACTS_BUCKET, Key=job["artifact"])
        assert head["Metadata"]["sha256"] == job["sha256"]
    report = stack.get_json(MODELS_BUCKET, key + ".report.json")
    assert report["status"] == "accepted"
    assert {p: s["status"] for p, s in report["profiles"].items()} == {
        "x86_64": "ok", "aarch64": "ok"}
    assert report["profiles"]["x86_64"]["verified"] is True
    job_report = stack.get_json(ARTIFACTS_BUCKET, "artifacts/tiny/1/x86_64.report.json")
    assert job_report["signed_by"] == hashlib.sha256(der).hexdigest()
    assert job_report["build_machine"] == platform.machine()  # aarch64 on the arm64 function
    notes = stack.notifications()
    assert sorted((n["event"], n["profile"]) for n in notes) == [
        ("compile.succeeded", "aarch64"), ("compile.succeeded", "x86_64")]
    # the upload is untouched
    assert stack.s3.get_object(Bucket=MODELS_BUCKET, Key=key)["Body"].read() == data

    # a redelivered message does not compile again, and the artifact is not replaced
    before = stack.s3.head_object(Bucket=ARTIFACTS_BUCKET, Key="artifacts/tiny/1/x86_64.efa")
    [again] = [m for m in messages if '"x86_64"' in m["Body"]]
    assert stack.run_compile([again]) == {"batchItemFailures": []}
    after = stack.s3.head_object(Bucket=ARTIFACTS_BUCKET, Key="artifacts/tiny/1/x86_64.efa")
    assert before["ETag"] == after["ETag"]


def _other_key_der() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_one_profile_failing_does_not_block_the_others(compiling_stack: Stack):
    stack = compiling_stack
    key = "models/mixed/mixed.onnx"
    messages = _ingest(stack, key, conv_relu_model(5),
                       {"profiles": [MISSING_TOOLCHAIN_PROFILE, "x86_64"]})
    # separate invocations, as with BatchSize 1
    for m in messages:
        assert stack.run_compile([m]) == {"batchItemFailures": []}  # nothing to retry

    assert stack.keys(ARTIFACTS_BUCKET, "artifacts/mixed/1/") == [
        "artifacts/mixed/1/x86_64-missing-cc.report.json",
        "artifacts/mixed/1/x86_64.efa", "artifacts/mixed/1/x86_64.report.json"]
    failed = stack.get_json(ARTIFACTS_BUCKET, "artifacts/mixed/1/x86_64-missing-cc.report.json")
    assert failed["result"]["status"] == "failed"
    assert failed["result"]["error"]["code"] == "toolchain_missing"
    assert "edgeforge-test-no-such-g++" in failed["result"]["error"]["message"]

    report = stack.get_json(MODELS_BUCKET, key + ".report.json")
    assert report["profiles"]["x86_64"]["status"] == "ok"
    bad = report["profiles"][MISSING_TOOLCHAIN_PROFILE]
    assert bad["status"] == "failed" and bad["error"]["code"] == "toolchain_missing"
    assert bad["error"]["help"]
    assert _job(stack, "mixed", 1, MISSING_TOOLCHAIN_PROFILE)["status"] == "failed"
    notes = {n["profile"]: n for n in stack.notifications()}
    assert notes[MISSING_TOOLCHAIN_PROFILE]["event"] == "compile.failed"
    assert notes[MISSING_TOOLCHAIN_PROFILE]["error"]["code"] == "toolchain_missing"
    assert notes["x86_64"]["event"] == "compile.succeeded"
    # the failed job's message is done: nothing comes back
    assert stack.compile_messages() == []
    assert stack.receive(stack.dlq) == []


def test_messages_name_exact_source_versions(compiling_stack: Stack):
    """A model replaced after ingest still compiles from the bytes that were validated."""
    stack = compiling_stack
    key = "models/swap/swap.onnx"
    [message] = _ingest(stack, key, conv_relu_model(7), {"profiles": [MISSING_TOOLCHAIN_PROFILE]})
    stack.upload(key, b"replaced by something else")
    stack.s3_events()
    body = CompileMessage.model_validate_json(message["Body"])
    assert body.source.sha256 == hashlib.sha256(conv_relu_model(7)).hexdigest()
    assert stack.run_compile([message]) == {"batchItemFailures": []}
    # it failed for its toolchain, not because the object changed: the right version was read
    failed = stack.get_json(ARTIFACTS_BUCKET, f"artifacts/swap/1/{MISSING_TOOLCHAIN_PROFILE}.report.json")
    assert failed["result"]["error"]["code"] == "toolchain_missing"

"""The compile function's queue semantics, without TVM: transient failures come back and end in
the DLQ after three receives; permanent ones and malformed messages are not retried."""

from __future__ import annotations

import json

from aws_stack import MODELS_BUCKET, TABLE, Stack, conv_relu_model, load_event


def _queued(stack: Stack, key: str = "models/q/q.onnx") -> None:
    stack.upload(key, conv_relu_model())
    [event] = [e for e in stack.s3_events() if "Records" in e]
    assert stack.run_ingest(event)["outcomes"][0]["status"] == "accepted"


def _event_source_poll(stack: Stack) -> list[dict]:
    """One poll of the Lambda SQS event source: receive, invoke, delete what succeeded."""
    messages = stack.sqs.receive_message(QueueUrl=stack.compile_queue, MaxNumberOfMessages=10,
                                         VisibilityTimeout=0).get("Messages", [])
    if not messages:
        return []
    failed = {f["itemIdentifier"] for f in stack.run_compile(messages)["batchItemFailures"]}
    for m in messages:
        if m["MessageId"] not in failed:
            stack.sqs.delete_message(QueueUrl=stack.compile_queue, ReceiptHandle=m["ReceiptHandle"])
    return messages


def test_transient_failure_is_retried_then_dead_lettered(stack: Stack):
    _queued(stack)
    stack.ddb.delete_table(TableName=TABLE)  # every job-record read now fails (transiently)

    receives = 0
    while _event_source_poll(stack):
        receives += 1
        assert receives <= 3
    assert receives == 3  # maxReceiveCount
    [dead] = stack.receive(stack.dlq)
    assert json.loads(dead["Body"])["model_name"] == "q"


def test_failure_report_lists_the_failed_item_only(stack: Stack):
    _queued(stack)
    [good] = stack.receive(stack.compile_queue)
    junk = dict(good, MessageId="junk-1", Body='{"not": "a compile message"}')
    stack.ddb.delete_table(TableName=TABLE)
    response = stack.run_compile([junk, good])
    # the malformed message is dropped (retrying cannot fix it); the transient one comes back
    assert response == {"batchItemFailures": [{"itemIdentifier": good["MessageId"]}]}


def test_no_time_left_means_retry_not_failure(stack: Stack):
    _queued(stack)
    [message] = stack.receive(stack.compile_queue)
    response = stack.run_compile([message], remaining_s=20)  # below margin + minimum build time
    assert response == {"batchItemFailures": [{"itemIdentifier": message["MessageId"]}]}
    report = stack.get_json(MODELS_BUCKET, "models/q/q.onnx.report.json")
    assert report["profiles"]["x86_64"]["status"] == "queued"


def test_source_deleted_before_compile_is_a_permanent_failure(stack: Stack):
    _queued(stack, "models/gone/gone.onnx")
    [message] = stack.receive(stack.compile_queue)
    for v in stack.s3.list_object_versions(Bucket=MODELS_BUCKET,
                                           Prefix="models/gone/gone.onnx")["Versions"]:
        if v["Key"] == "models/gone/gone.onnx":
            stack.s3.delete_object(Bucket=MODELS_BUCKET, Key=v["Key"], VersionId=v["VersionId"])
    assert stack.run_compile([message]) == {"batchItemFailures": []}
    report = stack.get_json(MODELS_BUCKET, "models/gone/gone.onnx.report.json")
    assert report["profiles"]["x86_64"]["error"]["code"] == "source_changed"
    [note] = [n for n in stack.notifications() if n["event"] == "compile.failed"]
    assert note["error"]["code"] == "source_changed"


def test_sample_compile_event_is_handled(stack: Stack):
    """events/compile-sqs.json as `sam local invoke` sends it: its source does not exist in this
    account, so the job fails permanently with a report, and nothing is retried."""
    event = load_event("compile-sqs.json")
    from aws_stack import FakeContext

    response = stack.compile.lambda_handler(event, FakeContext("edgeforge-compile"))
    assert response == {"batchItemFailures": []}
    [note] = stack.notifications()
    assert note["event"] == "compile.failed" and note["error"]["code"] == "source_changed"


class FakeBatch:
    """Stands in for compiler.storage.BatchJobs (moto's Batch would start Docker containers)."""

    def __init__(self) -> None:
        self.submitted: list[tuple[str, dict]] = []

    def submit(self, name: str, environment: dict) -> str:
        self.submitted.append((name, dict(environment)))
        return f"job-{len(self.submitted)}"


def test_tuning_requests_are_offloaded_to_batch(stack: Stack, monkeypatch):
    batch = FakeBatch()
    monkeypatch.setattr(stack.compile.runner, "offload", batch)
    stack.s3.put_object(Bucket=MODELS_BUCKET, Key="models/big/big.onnx.spec.json",
                        Body=json.dumps({"options": {"tune_trials": 64}}).encode())
    _queued(stack, "models/big/big.onnx")
    [message] = stack.receive(stack.compile_queue)
    assert stack.run_compile([message]) == {"batchItemFailures": []}
    [(name, env)] = batch.submitted
    assert name == "big-1-x86_64"
    assert json.loads(env["EDGEFORGE_MESSAGE"]) == json.loads(message["Body"])
    report = stack.get_json(MODELS_BUCKET, "models/big/big.onnx.report.json")
    assert report["profiles"]["x86_64"] == {**report["profiles"]["x86_64"],
                                            "status": "offloaded", "batch_job": "job-1"}


def test_batch_entry_point_runs_one_message(stack: Stack, monkeypatch):
    from aws_stack import MISSING_TOOLCHAIN_PROFILE

    from functions.compile import batch

    stack.s3.put_object(Bucket=MODELS_BUCKET, Key="models/b/b.onnx.spec.json",
                        Body=json.dumps({"profiles": [MISSING_TOOLCHAIN_PROFILE]}).encode())
    _queued(stack, "models/b/b.onnx")
    [message] = stack.receive(stack.compile_queue)
    monkeypatch.setenv("EDGEFORGE_MESSAGE", message["Body"])
    assert batch.main() == 0  # done: failed permanently, with a report
    report = stack.get_json(MODELS_BUCKET, "models/b/b.onnx.report.json")
    assert report["profiles"][MISSING_TOOLCHAIN_PROFILE]["error"]["code"] == "toolchain_missing"

    stack.ddb.delete_table(TableName=TABLE)
    assert batch.main() == batch.EX_TEMPFAIL  # transient: the job definition retries on 75
    monkeypatch.setenv("EDGEFORGE_MESSAGE", "{}")
    assert batch.main() == 2

"""The ingest function against moto: notifications, versions, specs, rejections, hostile keys.
No TVM here: ingest validates models without compiling them."""

from __future__ import annotations

import copy
import json
import threading
from urllib.parse import quote_plus

import pytest
from aws_stack import (
    MODELS_BUCKET,
    TABLE,
    Stack,
    conv_relu_model,
    load_event,
)

from compiler.exceptions import TransientError
from compiler.jobs import CompileMessage, SourceRef, _upload_id, check_key, derive_model_name
from compiler.storage import parse_s3_notifications


def _upload_and_deliver(stack: Stack, key: str, data: bytes, spec=None) -> list[dict]:
    """Put an object, then return the S3 events moto delivered for it (TestEvents dropped)."""
    stack.upload(key, data, spec)
    return [e for e in stack.s3_events() if "Records" in e]


def _versions(stack: Stack, name: str) -> list[int]:
    resp = stack.ddb.query(TableName=TABLE, KeyConditionExpression="pk = :pk AND begins_with(sk, :v)",
                           ExpressionAttributeValues={":pk": {"S": f"MODEL#{name}"},
                                                      ":v": {"S": "VERSION#"}})
    return sorted(int(i["version"]["N"]) for i in resp["Items"])


def test_s3_test_event_is_ignored(stack: Stack):
    # moto sends one when the notification is configured; here it is, and the sample file too
    [test_event] = [e for e in stack.s3_events() if "Records" not in e]
    assert test_event["Event"] == "s3:TestEvent"
    assert stack.run_ingest(test_event) == {"outcomes": []}
    assert stack.run_ingest(load_event("ingest-s3-test-event.json")) == {"outcomes": []}
    assert stack.compile_messages() == []


def test_upload_gets_version_1_and_one_message_per_profile(stack: Stack):
    data = conv_relu_model()
    spec = {"profiles": ["x86_64", "aarch64"], "options": {"tolerance": 1e-4}}
    [event] = _upload_and_deliver(stack, "models/tiny/tiny.onnx", data, spec)
    [outcome] = stack.run_ingest(event)["outcomes"]
    assert outcome["status"] == "accepted"
    assert (outcome["model_name"], outcome["version"]) == ("tiny", 1)

    messages = [CompileMessage.model_validate_json(m["Body"]) for m in stack.compile_messages()]
    assert sorted(m.profile for m in messages) == ["aarch64", "x86_64"]
    assert {(m.model_name, m.version) for m in messages} == {("tiny", 1)}
    assert all(m.options.tolerance == 1e-4 and m.source.sha256 for m in messages)
    assert all(m.source.version_id for m in messages)  # the exact S3 version, found by ETag

    report = stack.get_json(MODELS_BUCKET, "models/tiny/tiny.onnx.report.json")
    assert report["status"] == "accepted" and report["version"] == 1
    assert {p: s["status"] for p, s in report["profiles"].items()} == {
        "x86_64": "queued", "aarch64": "queued"}


def test_same_event_delivered_three_times_makes_one_version(stack: Stack):
    [event] = _upload_and_deliver(stack, "models/dup/dup.onnx", conv_relu_model())
    first = stack.run_ingest(event)["outcomes"][0]
    # again as the same direct event, then wrapped in SQS as the local stack delivers it
    second = stack.run_ingest(copy.deepcopy(event))["outcomes"][0]
    wrapped = load_event("ingest-sqs-s3-put.json")
    wrapped["Records"][0]["body"] = json.dumps(event)
    third = stack.run_ingest(wrapped)["outcomes"][0]

    assert first["status"] == "accepted"
    assert [second["status"], third["status"]] == ["duplicate", "duplicate"]
    assert second["version"] == third["version"] == first["version"] == 1
    assert _versions(stack, "dup") == [1]
    assert len(stack.compile_messages()) == 1


def test_sample_event_file_resolves_to_the_current_object(stack: Stack):
    """events/ingest-s3-put.json names models/tiny/tiny.onnx with a made-up ETag: ingest falls
    back to the current object, and a second delivery is still a duplicate."""
    stack.upload("models/tiny/tiny.onnx", conv_relu_model())
    stack.s3_events()
    event = load_event("ingest-s3-put.json")
    assert stack.run_ingest(event)["outcomes"][0]["status"] == "accepted"
    assert stack.run_ingest(event)["outcomes"][0]["status"] == "duplicate"
    assert _versions(stack, "tiny") == [1]


def test_racing_uploads_each_get_a_version(stack: Stack):
    """Two different uploads of the same model, ingested concurrently: two versions, none lost,
    each message naming its own bytes."""
    key = "models/race/race.onnx"
    events = []
    for seed in (1, 2):
        events += _upload_and_deliver(stack, key, conv_relu_model(seed))
    assert len(events) == 2
    barrier = threading.Barrier(2)
    results: list[dict] = []
    errors: list[BaseException] = []

    def run(event: dict) -> None:
        barrier.wait()
        try:
            results.extend(stack.run_ingest(event)["outcomes"])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(e,)) for e in events]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r["version"] for r in results) == [1, 2]
    assert _versions(stack, "race") == [1, 2]
    messages = [CompileMessage.model_validate_json(m["Body"]) for m in stack.compile_messages()]
    assert sorted(m.version for m in messages) == [1, 2]
    assert len({m.source.sha256 for m in messages}) == 2
    assert len({m.source.version_id for m in messages}) == 2


def test_invalid_model_is_reported_and_not_retried(stack: Stack):
    key = "models/broken/broken.onnx"
    junk = b"this is not an ONNX model\n" * 10
    [event] = _upload_and_deliver(stack, key, junk)
    result = stack.run_ingest(event)  # returns normally: nothing to retry
    [outcome] = result["outcomes"]
    assert outcome["status"] == "rejected" and outcome["error_code"] == "not_onnx"

    report = stack.get_json(MODELS_BUCKET, key + ".report.json")
    assert report["status"] == "rejected"
    assert report["error"]["code"] == "not_onnx"
    assert "not an ONNX model" in report["error"]["message"]
    [note] = stack.notifications()
    assert note["event"] == "upload.rejected" and note["key"] == key
    assert note["report"] == f"s3://{MODELS_BUCKET}/{key}.report.json"
    # the original is untouched and nothing was queued
    assert stack.s3.get_object(Bucket=MODELS_BUCKET, Key=key)["Body"].read() == junk
    assert stack.compile_messages() == []
    # a redelivery is a duplicate: no second notification
    assert stack.run_ingest(event)["outcomes"][0]["status"] == "duplicate"
    assert stack.notifications() == []


def test_model_needing_a_shape_is_rejected_then_accepted_with_a_spec(stack: Stack):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")], "dyn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = model.SerializeToString()
    onnx.checker.check_model(model)

    [event] = _upload_and_deliver(stack, "models/dyn/dyn.onnx", data)
    assert stack.run_ingest(event)["outcomes"][0]["error_code"] == "dynamic_shape"
    report = stack.get_json(MODELS_BUCKET, "models/dyn/dyn.onnx.report.json")
    assert "--input-shape x=1,4" in report["error"]["message"]

    [event] = _upload_and_deliver(stack, "models/dyn/dyn.onnx", data,
                                  {"input_shapes": {"x": [2, 4]}, "name": "dynamic"})
    [outcome] = stack.run_ingest(event)["outcomes"]
    assert (outcome["status"], outcome["model_name"], outcome["version"]) == (
        "accepted", "dynamic", 1)
    [message] = [CompileMessage.model_validate_json(m["Body"]) for m in stack.compile_messages()]
    assert message.input_shapes == {"x": [2, 4]}
    assert stack.get_json(MODELS_BUCKET, "models/dyn/dyn.onnx.report.json")["status"] == "accepted"


@pytest.mark.parametrize(("spec", "code", "words"), [
    ({"profiles": ["x86_64", "rpi9"]}, "profile", "unknown profile 'rpi9'"),
    ({"profiles": []}, "spec", "profiles"),
    ({"options": {"tolerance": -1}}, "spec", "tolerance"),
    ({"colour": "blue"}, "spec", "colour"),
])
def test_bad_spec_sidecar_is_reported(stack: Stack, spec, code, words):
    [event] = _upload_and_deliver(stack, "models/spec/spec.onnx", conv_relu_model(), spec)
    [outcome] = stack.run_ingest(event)["outcomes"]
    assert (outcome["status"], outcome["error_code"]) == ("rejected", code)
    report = stack.get_json(MODELS_BUCKET, "models/spec/spec.onnx.report.json")
    assert words in report["error"]["message"]
    assert stack.compile_messages() == []


def test_key_with_spaces_and_unicode(stack: Stack):
    key = "models/my model/modèle v2.onnx"
    [event] = _upload_and_deliver(stack, key, conv_relu_model())
    assert event["Records"][0]["s3"]["object"]["key"] == quote_plus(key)  # moto encodes '/'
    [outcome] = stack.run_ingest(event)["outcomes"]
    assert (outcome["status"], outcome["key"], outcome["model_name"]) == (
        "accepted", key, "my-model")
    report = stack.get_json(MODELS_BUCKET, key + ".report.json")
    assert report["source"]["key"] == key
    # the sample event (sam's encoding: %20, not '+') names the same object: a duplicate
    assert stack.run_ingest(load_event("ingest-s3-put-unicode.json"))["outcomes"][0][
        "status"] == "duplicate"


@pytest.mark.parametrize("key", [
    "models/../../etc/passwd.onnx",
    "models/a/./b.onnx",
    "/models/abs.onnx",
    "models//double.onnx",
    "models/ctl\x07bell.onnx",
    "models/new\nline.onnx",
    "models/back\\slash.onnx",
    "models/\u202egnp.onnx",
])
def test_hostile_keys_are_refused_without_reading(stack: Stack, key):
    event = load_event("ingest-s3-put.json")
    event["Records"][0]["s3"]["object"]["key"] = quote_plus(key)
    [outcome] = stack.run_ingest(event)["outcomes"]
    assert (outcome["status"], outcome["error_code"]) == ("rejected", "unsafe_key")
    # the report goes to a fixed hashed key under models/_rejected/, never next to the key
    assert outcome["report_key"].startswith("models/_rejected/")
    report = stack.get_json(MODELS_BUCKET, outcome["report_key"])
    assert report["error"]["code"] == "unsafe_key"
    assert all(ord(c) >= 32 for c in report["key"])  # shown escaped
    assert stack.keys(MODELS_BUCKET) == [outcome["report_key"]]
    [note] = stack.notifications()
    assert note["event"] == "upload.rejected"
    assert stack.compile_messages() == []


def test_traversal_key_through_real_s3_notification(stack: Stack):
    """moto stores the '../' key as given and notifies it; the sample event file agrees."""
    key = "models/../../etc/passwd.onnx"
    [event] = _upload_and_deliver(stack, key, conv_relu_model())
    [outcome] = stack.run_ingest(event)["outcomes"]
    assert outcome["error_code"] == "unsafe_key"
    [sample] = stack.run_ingest(load_event("ingest-s3-put-traversal.json"))["outcomes"]
    assert sample["report_key"] == outcome["report_key"]
    # the object itself is left alone
    assert stack.s3.get_object(Bucket=MODELS_BUCKET, Key=key)["Body"].read() == conv_relu_model()


def test_keys_outside_models_or_other_buckets_are_ignored(stack: Stack):
    event = load_event("ingest-s3-put.json")
    event["Records"][0]["s3"]["object"]["key"] = "uploads/x.onnx"
    assert stack.run_ingest(event)["outcomes"][0]["status"] == "ignored"
    event["Records"][0]["s3"]["bucket"]["name"] = "someone-elses-bucket"
    assert stack.run_ingest(event)["outcomes"][0]["status"] == "ignored"


def test_check_key_and_model_names():
    check_key("models/resnet/resnet 50 (final).onnx")
    check_key("models/日本/モデル.onnx")
    assert derive_model_name("models/resnet/v1/resnet50.onnx") == "resnet"
    assert derive_model_name("models/mobilenet_v2.onnx") == "mobilenet_v2"
    assert derive_model_name("models/Modèle Été/x.onnx") == "Modele-Ete"
    assert derive_model_name("models/日本/x.onnx").startswith("model-")
    assert derive_model_name("models/-_-x/y.onnx") == "x"


def test_transient_failure_releases_the_claim_and_the_retry_keeps_the_version(stack: Stack):
    """The compile queue is unavailable: the invocation raises (Lambda retries it), and the
    retry reuses the version the failed attempt had assigned."""
    [event] = _upload_and_deliver(stack, "models/retry/retry.onnx", conv_relu_model())
    stack.sqs.delete_queue(QueueUrl=stack.compile_queue)
    with pytest.raises(TransientError):
        stack.run_ingest(event)
    assert _versions(stack, "retry") == [1]
    stack.sqs.create_queue(QueueName="edgeforge-compile")  # same name, same URL
    [outcome] = stack.run_ingest(event)["outcomes"]
    assert (outcome["status"], outcome["version"]) == ("accepted", 1)
    assert _versions(stack, "retry") == [1]
    assert len(stack.compile_messages()) == 1


def test_a_live_claim_makes_a_concurrent_duplicate_retry_later(stack: Stack):
    from compiler.jobs import UploadInProgressError

    [event] = _upload_and_deliver(stack, "models/busy/busy.onnx", conv_relu_model())
    ingestor = stack.ingest.ingestor
    [record] = parse_s3_notifications(event)
    info = ingestor._locate(record)
    source = SourceRef(bucket=info.bucket, key=info.key, version_id=info.version_id,
                       etag=info.etag, size=info.size)
    ingestor.jobs.claim_upload(_upload_id(info), source)  # another invocation is working on it
    with pytest.raises(UploadInProgressError):
        stack.run_ingest(event)

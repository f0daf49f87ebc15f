"""The one-shot demo: the whole cloud-to-edge flow on this machine.

Up (the local stack from template.yaml, unless one is running already) → upload an ONNX model
and its spec sidecar with plain boto3 → watch the jobs per profile → act as a device (no AWS
credentials: plain HTTP GETs of the signed repository index and the artifact, verified with
the KMS public key) and run the artifact next to onnxruntime → summary → down.

This is a front-end like the CLI: it writes progress through ``out`` (``print`` by default).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .stack import LocalStack, StackInfo, StackOptions, running_stack
from .template import LocalStackError

__all__ = ["DEFAULT_PROFILES", "DemoOptions", "DemoResult", "run_demo"]

DEFAULT_PROFILES = ["x86_64", "rpi4", "armv7", "jetson-orin"]
_TERMINAL = ("ok", "failed")


class DemoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: An .onnx file; None = the built-in sample CNN.
    model: Path | None = None
    profiles: list[str] = Field(default_factory=lambda: list(DEFAULT_PROFILES), min_length=1)
    stack: StackOptions = Field(default_factory=lambda: StackOptions(port=0))
    #: The device's directory: its trusted key and artifact cache.
    work_dir: Path = Path(".cache/demo")
    #: How long to wait for every profile's compile.
    timeout_s: float = Field(default=1800.0, gt=0)


class DemoResult(BaseModel):
    model: str
    key: str
    version: int | None = None
    status: str
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)
    device: dict[str, Any] | None = None
    notifications: list[str] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        device_ok = self.device is None or self.device.get("match", False)
        return (self.status == "accepted" and device_ok
                and all(p.get("status") == "ok" for p in self.profiles.values()))


class _Clock:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def __str__(self) -> str:
        return f"[{time.monotonic() - self.start:6.1f}s]"


def _sample_or_file(options: DemoOptions) -> tuple[bytes, str, str]:
    """(model bytes, model name, object key)."""
    from compiler.jobs import derive_model_name

    if options.model is None:
        from compiler import samples

        return samples.tiny_cnn(size=32, channels=8), "tiny-cnn", "models/tiny-cnn/tiny-cnn.onnx"
    data = options.model.read_bytes()
    name = derive_model_name(f"models/{options.model.stem}/x.onnx")
    return data, name, f"models/{name}/{options.model.name}"


def run_demo(options: DemoOptions, out: Callable[[str], None] = print) -> int:
    """Run the demo; 0 when every profile built and the device's output matched."""
    from compiler.profiles import load_profiles

    registry = load_profiles()
    for profile in options.profiles:
        registry.get(profile)  # an unknown profile fails here, before anything starts
    clock = _Clock()
    data, name, key = _sample_or_file(options)

    stack: LocalStack | None = None
    info = running_stack(options.stack.state_dir)
    if info is not None:
        out(f"{clock} using the local stack already running at {info.endpoint} "
            f"(pid {info.pid}); it keeps running afterwards")
    else:
        out(f"{clock} starting the local stack: moto on 127.0.0.1, resources from "
            f"{options.stack.template}")
        stack = LocalStack(options.stack)
        info = stack.start()
        _describe(info, clock, out)
    try:
        result = _run(info, stack, options, data, name, key, clock, out)
    finally:
        if stack is not None:
            out(f"{clock} stopping the local stack")
            stack.stop()
            out(f"{clock} stopped: no process of the stack is left "
                "(run `edgeforge dev up` to keep one running)")
    _summary(result, out)
    return 0 if result.ok else 1


def _describe(info: StackInfo, clock: _Clock, out: Callable[[str], None]) -> None:
    kinds: dict[str, int] = {}
    for res in info.resources.values():
        kinds[res["type"]] = kinds.get(res["type"], 0) + 1
    out(f"{clock} endpoint {info.endpoint}: "
        + ", ".join(f"{n} {t.split('::', 1)[1]}" for t, n in sorted(kinds.items())))
    for fn in info.functions.values():
        out(f"{clock}   {fn.logical_id}: {fn.handler} ← {fn.event_source} "
            f"(batch {fn.batch_size}, {fn.concurrency} worker(s))")


def _run(info: StackInfo, stack: LocalStack | None, options: DemoOptions, data: bytes,
         name: str, key: str, clock: _Clock, out: Callable[[str], None]) -> DemoResult:
    s3 = info.client("s3")
    models = str(info.outputs["ModelsBucketName"])
    notes = _subscribe(info)

    spec = {"profiles": options.profiles}
    s3.put_object(Bucket=models, Key=key + ".spec.json", Body=json.dumps(spec).encode())
    put = s3.put_object(Bucket=models, Key=key, Body=data)
    out(f"{clock} uploaded s3://{models}/{key} ({len(data):,} bytes; boto3, as `aws "
        f"--endpoint-url {info.endpoint} s3 cp` would), after its spec {json.dumps(spec)}")
    result = DemoResult(model=name, key=key, status="pending")
    report = _watch(info, stack, key, put.get("VersionId"), options, clock, out, result, notes)
    if report is None or report.get("status") != "accepted":
        return result
    result.device = _device(info, options, stack is not None, result, data, clock, out)
    return result


def _subscribe(info: StackInfo) -> tuple[Any, str] | None:
    """A queue subscribed to the notifications topic, as a user would watch it."""
    topic = info.outputs.get("NotificationsTopicArn")
    if not topic:
        return None
    sqs, sns = info.client("sqs"), info.client("sns")
    url = sqs.create_queue(QueueName=f"{info.stack_name}-demo-notifications")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=str(topic), Protocol="sqs", Endpoint=arn)
    return sqs, url


def _notifications(notes: tuple[Any, str] | None) -> list[dict[str, Any]]:
    if notes is None:
        return []
    sqs, url = notes
    out = []
    for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        with contextlib.suppress(ValueError, KeyError):
            out.append(json.loads(json.loads(m["Body"])["Message"]))
    return out


def _last_notifications(notes: tuple[Any, str] | None, want: int, result: DemoResult,
                        clock: _Clock, out: Callable[[str], None]) -> None:
    """Notifications are published right after the report is updated: wait a moment."""
    deadline = time.monotonic() + 3
    while notes is not None and len(result.notifications) < want and time.monotonic() < deadline:
        _show_notifications(notes, result, clock, out)
        time.sleep(0.2)


def _show_notifications(notes: tuple[Any, str] | None, result: DemoResult, clock: _Clock,
                        out: Callable[[str], None]) -> None:
    for n in _notifications(notes):
        line = f"{n.get('event')} {n.get('profile') or n.get('key', '')}".strip()
        result.notifications.append(line)
        out(f"{clock}   SNS: {line}")


def _get_json(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))
    except s3.exceptions.NoSuchKey:
        return None


def _watch(info: StackInfo, stack: LocalStack | None, key: str, version_id: str | None,
           options: DemoOptions, clock: _Clock, out: Callable[[str], None], result: DemoResult,
           notes: tuple[Any, str] | None) -> dict[str, Any] | None:
    """Follow the report next to the model and the job records until every profile is done."""
    s3, ddb = info.client("s3"), info.client("dynamodb")
    models, artifacts = str(info.outputs["ModelsBucketName"]), str(info.outputs["ArtifactsBucketName"])
    table = str(info.outputs["JobsTableName"])
    shown: dict[str, str] = {}
    deadline = time.monotonic() + options.timeout_s
    accepted = False
    while True:
        if stack is not None and stack.status().failure:
            raise LocalStackError(str(stack.status().failure))
        _show_notifications(notes, result, clock, out)
        report = _get_json(s3, models, key + ".report.json")
        mine = report is not None and (version_id is None or (report.get("source") or {}).get(
            "version_id") == version_id)
        if mine and report is not None:
            result.status = str(report.get("status"))
            if report["status"] == "rejected":
                error = report.get("error") or {}
                out(f"{clock} rejected: {error.get('code')}: {error.get('message')}")
                return report
            if not accepted:
                accepted = True
                result.model, result.version = str(report["model"]), int(report["version"])
                out(f"{clock} ingest accepted it as {report['model']} v{report['version']}: one "
                    f"compile message per profile ({', '.join(report['profiles'])})")
            jobs = _jobs(ddb, table, str(report["model"]), int(report["version"]))
            finished = True
            for profile in options.profiles:
                entry = (report.get("profiles") or {}).get(profile, {})
                job = jobs.get(profile, {})
                if entry.get("status") in _TERMINAL:
                    state = str(entry["status"])
                elif job.get("status") in _TERMINAL:  # the report is written right after
                    state = "running"
                else:
                    state = str(job.get("status") or entry.get("status") or "queued")
                if state == "running" and int(job.get("attempts", 1)) > 1:
                    state = f"running (attempt {int(job['attempts'])})"
                if entry.get("status") not in _TERMINAL:
                    finished = False
                if shown.get(profile) != state:
                    shown[profile] = state
                    out(f"{clock} {profile:<13} {_describe_state(state, entry)}")
                    if state in _TERMINAL:
                        result.profiles[profile] = _profile_result(s3, artifacts, entry)
            if finished:
                result.profiles = {p: result.profiles[p] for p in options.profiles
                                   if p in result.profiles}
                _last_notifications(notes, len(options.profiles), result, clock, out)
                return report
        if time.monotonic() > deadline:
            out(f"{clock} gave up waiting after {options.timeout_s:.0f} s")
            for profile in options.profiles:
                result.profiles.setdefault(profile, {"status": shown.get(profile, "queued")})
            return report
        time.sleep(0.5)


def _jobs(ddb: Any, table: str, model: str, version: int) -> dict[str, dict[str, Any]]:
    resp = ddb.query(TableName=table, ConsistentRead=True,
                     KeyConditionExpression="pk = :pk AND begins_with(sk, :sk)",
                     ExpressionAttributeValues={":pk": {"S": f"MODEL#{model}"},
                                                ":sk": {"S": f"JOB#{version:010d}#"}})
    from boto3.dynamodb.types import TypeDeserializer

    de = TypeDeserializer()
    out = {}
    for item in resp.get("Items", []):
        flat = {k: de.deserialize(v) for k, v in item.items()}
        out[str(flat.get("profile"))] = flat
    return out


def _verified(entry: dict[str, Any]) -> str:
    v = entry.get("verification") or {}
    if entry.get("verified"):
        where = {"native": "host", "qemu-user": "qemu"}.get(str(v.get("method")), v.get("method"))
        err = v.get("max_rel_error")
        noise = " within onnxruntime's own noise" if v.get("within_reference_noise") else ""
        return (f"{where}" + (f" (max rel err {err:.1e})" if isinstance(err, int | float) else "")
                + noise)
    return "no" + (f" — {v['reason']}" if v.get("reason") else "")


def _describe_state(state: str, entry: dict[str, Any]) -> str:
    if state == "ok":
        verified = _verified(entry)
        how = (f"verified on {verified}" if entry.get("verified")
               else f"not verified here{verified.removeprefix('no')}")
        return f"ok: {int(entry.get('size') or 0):,} bytes, signed, {how}"
    if state == "failed":
        error = entry.get("error") or {}
        return f"failed: {error.get('code')}: {error.get('message')}"
    return state


def _profile_result(s3: Any, artifacts: str, entry: dict[str, Any]) -> dict[str, Any]:
    out = dict(entry)
    report_uri = str(entry.get("report") or "")
    if report_uri.startswith(f"s3://{artifacts}/"):
        job = _get_json(s3, artifacts, report_uri.removeprefix(f"s3://{artifacts}/")) or {}
        out["timings"] = job.get("timings") or {}
    return out


def _device(info: StackInfo, options: DemoOptions, fresh_stack: bool, result: DemoResult,
            model: bytes, clock: _Clock, out: Callable[[str], None]) -> dict[str, Any] | None:
    """Pull this machine's artifact as a device does, verify it, run it."""
    import numpy as np
    import onnxruntime as ort

    from compiler.profiles import load_profiles
    from edgeforge_runtime import host_arch
    from edgeforge_runtime.client import RepositoryClient
    from edgeforge_runtime.repository import index_path

    registry = load_profiles()
    host = next((p for p in options.profiles if result.profiles.get(p, {}).get("status") == "ok"
                 and registry.get(p).arch == host_arch() and registry.get(p).device == "cpu"),
                None)
    if host is None or info.repository_url is None:
        out(f"{clock} device: no artifact for this machine ({host_arch()}) was built; skipping")
        return None
    device_dir = options.work_dir / "device"
    if fresh_stack:  # a new stack has a new signing key and starts its index versions at 1
        shutil.rmtree(device_dir, ignore_errors=True)
    trusted = device_dir / "trusted" / "edgeforge-signing.der"
    trusted.parent.mkdir(parents=True, exist_ok=True)
    key_id = str(info.outputs.get("SigningKeyArn") or info.outputs.get("SigningKeyAlias"))
    trusted.write_bytes(bytes(info.client("kms").get_public_key(KeyId=key_id)["PublicKey"]))
    out(f"{clock} device: trusts {trusted} (KMS GetPublicKey, DER); from here on no AWS "
        "credentials, only HTTP GETs")
    client = RepositoryClient(info.repository_url, [trusted], host, device_dir / "cache")
    out(f"{clock} device: GET {info.repository_url}{index_path(result.model, host)} "
        "(signed index) → the artifact it names")
    path = client.update(result.model)
    session = client.session(result.model)
    out(f"{clock} device: {path.name}: index and artifact signatures, sizes and sha256 "
        f"verified (signed by {session.signed_by[0][:16]}…, model version "
        f"{session.get_modelmeta()['version']}, index version {client.trusted_version(result.model)})")
    rng = np.random.default_rng(0)
    feed = {i.name: rng.standard_normal(i.shape).astype(i.dtype) for i in session.get_inputs()}
    ours = session.run(None, feed)
    reference = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feed)
    worst = 0.0
    for o, a, b in zip(session.get_outputs(), ours, reference):
        diff = float(np.abs(np.asarray(a) - np.asarray(b)).max())
        worst = max(worst, diff)
        out(f"{clock} device: {o.name} edgeforge   {np.array2string(np.asarray(a).ravel()[:5], precision=4)}")
        out(f"{clock} device: {o.name} onnxruntime {np.array2string(np.asarray(b).ravel()[:5], precision=4)}"
            f"  (max abs diff {diff:.2e})")
    match = all(np.allclose(a, b, rtol=1e-3, atol=1e-4) for a, b in zip(ours, reference))
    return {"profile": host, "artifact": str(path), "match": match, "max_abs_diff": worst,
            "signed_by": session.signed_by[0]}


def _summary(result: DemoResult, out: Callable[[str], None]) -> None:
    out("")
    if result.status == "rejected":
        out(f"{result.key}: rejected (see {result.key}.report.json)")
        return
    out(f"{result.model} v{result.version}")
    out(f"{'profile':<13} {'status':<7} {'compile s':>9} {'size':>9}  verified")
    for profile, entry in result.profiles.items():
        secs = (entry.get("timings") or {}).get("build_total_s")
        size = f"{int(entry['size']):,}" if entry.get("size") else "-"
        verified = _verified(entry) if entry.get("status") == "ok" else "-"
        out(f"{profile:<13} {entry.get('status', '?'):<7} "
            f"{(f'{secs:.1f}' if isinstance(secs, int | float) else '-'):>9} {size:>9}  "
            f"{verified}")
    if result.device:
        d = result.device
        out(f"device ({d['profile']}): pulled over HTTP without credentials, signature verified "
            f"with the KMS public key, output {'matches' if d['match'] else 'DIFFERS FROM'} "
            f"onnxruntime (max abs diff {d['max_abs_diff']:.1e})")
    if result.notifications:
        out(f"SNS notifications: {', '.join(result.notifications)}")

"""The serverless job lifecycle: an uploaded model becomes one version and one compile job per
target profile; each job becomes a signed artifact or a readable failure report.

Two services, both with every AWS client injected (through :mod:`compiler.storage`):

* :class:`Ingestor` — for each S3 ``ObjectCreated`` record: refuse unsafe keys, locate the exact
  object version, claim the upload (so duplicate deliveries do nothing), read the optional spec
  sidecar, validate the model cheaply (no TVM), assign the next version of the model, and send one
  :class:`CompileMessage` per profile: to the arm64 compile queue when one is configured and
  :func:`builds_on_arm64` says so, else to the compile queue.
* :class:`CompileRunner` — for each message: compile that one profile, publish the artifact
  (never replacing one already published), record the job, update the report next to the model
  and notify.

Storage layout (see ``docs/SAM.md``)::

    models bucket     models/<name>/<file>.onnx              the upload (never modified)
                      models/<name>/<file>.onnx.spec.json    optional compile spec (upload it first)
                      models/<name>/<file>.onnx.report.json  what happened to the upload
                      models/_rejected/<sha>.report.json     reports for unusable (hostile) keys
    artifacts bucket  artifacts/<name>/<version>/<profile>.efa           signed artifact
                      artifacts/<name>/<version>/<profile>.report.json   job result

DynamoDB items (``pk`` / ``sk``)::

    UPLOAD#<upload id> / UPLOAD               claim of one distinct upload (state, lease, version)
    MODEL#<name>       / LATEST               highest version handed out (a hint)
    MODEL#<name>       / VERSION#<0000000007> version record (created once, conditionally)
    MODEL#<name>       / JOB#<0000000007>#<profile>   job record

An upload is ``(bucket, key, S3 version id)``, or ``(bucket, key, ETag)`` in an unversioned
bucket: the same upload delivered three times claims once and gets one version; two different
uploads racing each get their own (the version record's conditional create decides).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import platform
import re
import tempfile
import time
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeforge_runtime.repository import index_path

from .exceptions import (
    EdgeforgeError,
    ModelTooLargeError,
    PermanentError,
    SpecError,
    TransientError,
)
from .pipeline import ProfileResult, compile_model
from .profiles import Profile, ProfileRegistry, load_profiles
from .publish import next_index, signed_index
from .signing import Signer
from .spec import CompileOptions, CompileSpec
from .storage import (
    BatchJobs,
    ConditionalWriteError,
    JsonTable,
    Notifier,
    ObjectCreated,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    Queue,
)
from .validation import DEFAULT_MAX_MODEL_BYTES, validate_model
from .worker import CompileWorker

logger = logging.getLogger(__name__)

__all__ = [
    "MODELS_PREFIX",
    "CompileConfig",
    "CompileMessage",
    "CompileRunner",
    "IngestConfig",
    "IngestOutcome",
    "Ingestor",
    "JobOutcome",
    "JobStore",
    "SourceChangedError",
    "SourceRef",
    "UnsafeKeyError",
    "UploadInProgressError",
    "UploadReport",
    "UploadSpec",
    "artifact_key",
    "artifact_report_key",
    "builds_on_arm64",
    "check_key",
    "derive_model_name",
    "is_transient",
    "rejected_report_key",
    "report_key",
    "spec_key",
]

MODELS_PREFIX = "models/"
MODEL_SUFFIX = ".onnx"
_MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
_MAX_KEY_BYTES = 1024
#: Bidirectional-override characters: they make a key display as something it is not.
_BIDI = {*map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))}


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class UnsafeKeyError(PermanentError):
    """The object key has ``..`` / ``.`` / empty segments, a leading ``/``, a backslash,
    control characters or undecodable bytes; the object is not read."""

    code = "unsafe_key"


class SourceChangedError(PermanentError):
    """The model bytes differ from those validated at ingest (the object was replaced)."""

    code = "source_changed"


class UploadInProgressError(TransientError):
    """Another invocation holds the claim on this upload; try again after its lease."""

    code = "upload_in_progress"


def _subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub, *_subclasses(sub)}
    return out


def is_transient(code: str | None) -> bool:
    """Whether an error ``code`` (as in :class:`~compiler.pipeline.ProfileResult`) names a
    :class:`~compiler.exceptions.TransientError`: the pipeline turns every per-profile error into
    a result, so the caller must tell "retry" from "report" by the code."""
    codes = {TransientError.code} | {c.code for c in _subclasses(TransientError)}
    return code in codes


# --------------------------------------------------------------------------------------------
# Keys and layout
# --------------------------------------------------------------------------------------------


def check_key(key: str) -> None:
    """Raise :class:`UnsafeKeyError` unless ``key`` is a plain relative S3 key. Spaces and
    non-ASCII letters are fine; the message shows the key escaped (``ascii()``)."""
    problems = []
    if not key:
        problems.append("it is empty")
    elif len(key.encode("utf-8", "surrogatepass")) > _MAX_KEY_BYTES:
        problems.append(f"it is longer than {_MAX_KEY_BYTES} bytes")
    if key.startswith("/"):
        problems.append("it is absolute (starts with '/')")
    if "\\" in key:
        problems.append("it contains a backslash")
    if "\ufffd" in key or any(0xD800 <= ord(c) <= 0xDFFF for c in key):
        problems.append("it is not valid UTF-8")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in key):
        problems.append("it contains control characters")
    if any(c in _BIDI for c in key):
        problems.append("it contains bidirectional-override characters")
    segments = key.lstrip("/").split("/")
    if any(s in (".", "..") for s in segments):
        problems.append("it has '.' or '..' path segments")
    elif any(s == "" for s in segments[:-1]) or (key and key.endswith("/")):
        problems.append("it has empty path segments ('//' or a trailing '/')")
    if problems:
        raise UnsafeKeyError(
            f"the object key {ascii(key)[:300]} was refused because " + " and ".join(problems)
            + "; upload the model as models/<name>/<file>.onnx with a plain name"
        )


def _slug(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", folded)
    slug = re.sub(r"^[^A-Za-z0-9]+", "", slug)[:100].rstrip("-._")
    if not slug:
        slug = "model-" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return slug


def derive_model_name(key: str) -> str:
    """``models/<name>/…/<file>.onnx`` → ``<name>``; ``models/<file>.onnx`` → ``<file>``;
    folded to the model-name alphabet (``my model`` → ``my-model``, ``modèle`` → ``modele``;
    a name with no Latin letters becomes ``model-<hash>``)."""
    rel = key.removeprefix(MODELS_PREFIX)
    first, _, rest = rel.partition("/")
    return _slug(first if rest else first.removesuffix(MODEL_SUFFIX))


def report_key(model_key: str) -> str:
    return model_key + ".report.json"


def spec_key(model_key: str) -> str:
    return model_key + ".spec.json"


def rejected_report_key(raw_key: str) -> str:
    digest = hashlib.sha256(raw_key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{MODELS_PREFIX}_rejected/{digest}.report.json"


#: Prefix of the device repository in the artifacts bucket: devices use
#: ``https://<bucket endpoint>/artifacts/`` as their repository base URL.
ARTIFACTS_PREFIX = "artifacts/"


def artifact_key(model_name: str, version: int, profile: str) -> str:
    return f"{ARTIFACTS_PREFIX}{model_name}/{version}/{profile}.efa"


def artifact_report_key(model_name: str, version: int, profile: str) -> str:
    return f"{ARTIFACTS_PREFIX}{model_name}/{version}/{profile}.report.json"


def index_key(model_name: str, profile: str) -> str:
    """The signed repository index devices poll for (model, profile)."""
    return ARTIFACTS_PREFIX + index_path(model_name, profile)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


# --------------------------------------------------------------------------------------------
# Messages, specs, reports
# --------------------------------------------------------------------------------------------


class SourceRef(BaseModel):
    """The exact uploaded object a version was made from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bucket: str
    key: str
    version_id: str | None = None
    etag: str
    size: int = Field(ge=0)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    last_modified: str | None = None


class UploadSpec(BaseModel):
    """The optional sidecar ``<model key>.spec.json``; every field may be left out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(default=None, pattern=_MODEL_NAME)
    profiles: list[str] | None = Field(default=None, min_length=1, max_length=32)
    input_shapes: dict[str, list[int]] = Field(default_factory=dict)
    options: CompileOptions = CompileOptions()


class CompileMessage(BaseModel):
    """The body of one compile-queue message: one (model, version, profile)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: Literal[1] = Field(default=1, alias="schema")
    upload_id: str = Field(pattern=r"^[0-9a-f]{16,64}$")
    model_name: str = Field(pattern=_MODEL_NAME)
    version: int = Field(ge=1)
    profile: str = Field(min_length=1, max_length=63)
    source: SourceRef
    input_shapes: dict[str, list[int]] = Field(default_factory=dict)
    options: CompileOptions = CompileOptions()
    #: The report next to the model (models bucket) that this job updates.
    report_key: str

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)

    def spec(self) -> CompileSpec:
        return CompileSpec(model_name=self.model_name, model_version=str(self.version),
                           profiles=[self.profile], input_shapes=self.input_shapes,
                           options=self.options)


class ErrorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str
    message: str
    help: str | None = None


class ProfileStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["queued", "offloaded", "ok", "failed"]
    #: Where the build runs when not in the compile function (an AWS Batch job id).
    batch_job: str | None = None
    artifact: str | None = None
    sha256: str | None = None
    size: int | None = None
    verified: bool | None = None
    verification: dict[str, Any] | None = None
    report: str | None = None
    error: ErrorInfo | None = None
    updated_at: str = Field(default_factory=_now_iso)


class UploadReport(BaseModel):
    """The report written next to an uploaded model, for the person who uploaded it."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: Literal[1] = Field(default=1, alias="schema")
    status: Literal["accepted", "rejected"]
    upload_id: str | None = None
    model: str | None = None
    version: int | None = None
    source: SourceRef | None = None
    key: str | None = None
    profiles: dict[str, ProfileStatus] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    updated_at: str = Field(default_factory=_now_iso)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _help(code: str) -> str | None:
    return {
        "compile_timeout": "The compile needs more than the Lambda function allows: raise "
                           "CompileTimeout, or run it on the AWS Batch queue (docs/SAM.md).",
        "compile_resources": "The compile needs more memory than the Lambda function has: raise "
                             "CompileMemory (at most 10240 MB), or use AWS Batch (docs/SAM.md).",
        "toolchain_missing": "The compile image lacks this profile's toolchain; the other "
                             "profiles are unaffected. Remove the profile from the spec or "
                             "extend the image.",
        "unsafe_key": "Upload the model again under a plain key, e.g. models/resnet/resnet.onnx.",
        "spec": "Fix the compile spec (<model key>.spec.json), then upload the model again.",
        "profile": "See `edgeforge profiles` for the profile names.",
    }.get(code)


def _error(e: EdgeforgeError | None = None, *, code: str | None = None,
           message: str | None = None) -> ErrorInfo:
    code = code or (e.code if e else "error")
    return ErrorInfo(code=code, message=message or str(e), help=_help(code))


def _merge_rule(mine: UploadReport, current: dict[str, Any] | None) -> str:
    """How a writer treats the report already next to the model: ``merge`` (same upload),
    ``replace`` (none, unreadable, or about an older upload) or ``skip`` (about a newer one)."""
    if current is None:
        return "replace"
    try:
        cur = UploadReport.model_validate(current)
    except ValidationError:
        return "replace"
    if mine.upload_id is not None and cur.upload_id == mine.upload_id:
        return "merge"
    mine_t = (mine.source.last_modified if mine.source else None) or ""
    cur_t = (cur.source.last_modified if cur.source else None) or ""
    return "replace" if mine_t >= cur_t else "skip"


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


class UploadClaim(BaseModel):
    model_config = ConfigDict(frozen=True)

    upload_id: str
    #: The upload was processed already: "assigned" or "rejected".
    existing_state: str | None = None
    model_name: str | None = None
    version: int | None = None
    #: This invocation took over a claim whose holder's lease expired.
    takeover: bool = False


class JobStore:
    """Uploads, versions and jobs in one DynamoDB table (layout in the module docstring)."""

    def __init__(self, table: JsonTable, lease_s: float = 900.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.table = table
        self.lease_s = lease_s
        self._clock = clock

    # uploads -------------------------------------------------------------------------------
    def claim_upload(self, upload_id: str, source: SourceRef) -> UploadClaim:
        pk, now = f"UPLOAD#{upload_id}", self._clock()
        item = {"pk": pk, "sk": "UPLOAD", "type": "upload", "state": "pending",
                "lease_until": now + self.lease_s, "source": source.model_dump(),
                "created_at": _now_iso()}
        if self.table.put_new(item):
            return UploadClaim(upload_id=upload_id)
        current = self.table.get(pk, "UPLOAD") or {}
        state = current.get("state")
        if state in ("assigned", "rejected"):
            return UploadClaim(upload_id=upload_id, existing_state=state,
                               model_name=current.get("model"), version=current.get("version"))
        lease = float(current.get("lease_until", 0))
        if lease > now:
            raise UploadInProgressError(
                f"upload {upload_id} is being processed by another invocation (lease ends in "
                f"{lease - now:.0f} s)")
        try:
            self.table.update(pk, "UPLOAD", {"lease_until": now + self.lease_s},
                              condition="#st = :pending AND #lu = :lease",
                              names={"#st": "state", "#lu": "lease_until"},
                              condition_values={":pending": "pending", ":lease": lease})
        except ConditionalWriteError:
            raise UploadInProgressError(f"upload {upload_id} was taken over concurrently") from None
        return UploadClaim(upload_id=upload_id, takeover=True)

    def release_upload(self, upload_id: str) -> None:
        """Give a pending claim up (after a transient failure) so a retry need not wait."""
        try:
            self.table.update(f"UPLOAD#{upload_id}", "UPLOAD", {"lease_until": 0},
                              condition="#st = :pending", names={"#st": "state"},
                              condition_values={":pending": "pending"})
        except TransientError as e:
            logger.warning("could not release the claim on upload %s: %s", upload_id, e)

    def finish_upload(self, upload_id: str, state: Literal["assigned", "rejected"],
                      **fields: Any) -> None:
        self.table.update(f"UPLOAD#{upload_id}", "UPLOAD",
                          {"state": state, "updated_at": _now_iso(), **fields})

    # versions ------------------------------------------------------------------------------
    def assign_version(self, model_name: str, upload_id: str, record: dict[str, Any],
                       takeover: bool = False) -> int:
        """The next version of ``model_name`` for this upload. Uniqueness comes from creating
        ``VERSION#n`` conditionally; ``LATEST`` only saves probing from 1."""
        pk = f"MODEL#{model_name}"
        if takeover:  # a previous holder may have created the version before it died
            for item in self.table.query(pk, "VERSION#"):
                if item.get("upload_id") == upload_id:
                    return int(item["version"])
        latest = int((self.table.get(pk, "LATEST") or {}).get("latest", 0))
        for _ in range(1000):
            n = latest + 1
            item = {"pk": pk, "sk": f"VERSION#{n:010d}", "type": "version", "model": model_name,
                    "version": n, "upload_id": upload_id, "created_at": _now_iso(), **record}
            if self.table.put_new(item):
                # a racing upload may have moved the hint further already: fine
                with contextlib.suppress(ConditionalWriteError):
                    self.table.update(pk, "LATEST", {"latest": n},
                                      condition="attribute_not_exists(#l) OR #l < :n",
                                      names={"#l": "latest"}, condition_values={":n": n})
                return n
            latest = n
        raise TransientError(f"could not assign a version to {model_name}: too much contention")

    def versions(self, model_name: str) -> list[dict[str, Any]]:
        return self.table.query(f"MODEL#{model_name}", "VERSION#")

    # jobs ----------------------------------------------------------------------------------
    @staticmethod
    def _job_sk(version: int, profile: str) -> str:
        return f"JOB#{version:010d}#{profile}"

    def create_jobs(self, model_name: str, version: int, profiles: list[str],
                    upload_id: str) -> None:
        for profile in profiles:
            self.table.put_new({
                "pk": f"MODEL#{model_name}", "sk": self._job_sk(version, profile), "type": "job",
                "model": model_name, "version": version, "profile": profile,
                "upload_id": upload_id, "status": "queued", "attempts": 0,
                "created_at": _now_iso(), "updated_at": _now_iso(),
            })

    def get_job(self, model_name: str, version: int, profile: str) -> dict[str, Any] | None:
        return self.table.get(f"MODEL#{model_name}", self._job_sk(version, profile))

    def update_job(self, model_name: str, version: int, profile: str, *,
                   attempt: bool = False, **fields: Any) -> dict[str, Any]:
        return self.table.update(
            f"MODEL#{model_name}", self._job_sk(version, profile),
            {"updated_at": _now_iso(), "model": model_name, "version": version,
             "profile": profile, "type": "job", **fields},
            increment={"attempts": 1} if attempt else None)

    def jobs(self, model_name: str, version: int | None = None) -> list[dict[str, Any]]:
        prefix = "JOB#" if version is None else f"JOB#{version:010d}#"
        return self.table.query(f"MODEL#{model_name}", prefix)


# --------------------------------------------------------------------------------------------
# Ingest
# --------------------------------------------------------------------------------------------


class IngestConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    models_bucket: str
    default_profiles: list[str] = Field(min_length=1)
    max_model_bytes: int = Field(default=DEFAULT_MAX_MODEL_BYTES, gt=0)


class IngestOutcome(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["accepted", "duplicate", "rejected", "ignored"]
    key: str
    upload_id: str | None = None
    model_name: str | None = None
    version: int | None = None
    profiles: list[str] = Field(default_factory=list)
    #: With an arm64 compile queue: the profiles sent to it (the others went to the main one).
    arm64_profiles: list[str] | None = None
    report_key: str | None = None
    error_code: str | None = None
    reason: str | None = None


def builds_on_arm64(profile: Profile) -> bool:
    """Whether ``profile`` is compiled by the arm64 (AWS Graviton) compile function, where one
    is deployed (template.yaml ``ArmCompile=true``).

    The fast CPU build times several sampled schedules per task and keeps the fastest only where
    the target's code runs on the build machine (``compiler.optimize._runnable_on_host``: same
    architecture, the target's ISA features a subset of the host's); elsewhere it keeps the
    first, untimed sample. AArch64 CPU code runs natively on Graviton, so those profiles (rpi4,
    rpi5, graviton, aarch64) are timed there. Not armv7: TVM times candidates inside the
    compiling process, a 64-bit one that cannot load 32-bit code, so an arm64 builder gains
    nothing over x86_64. Not CUDA (the jetson profiles included): a build machine without a GPU
    times no kernels on either architecture, so they stay with the x86_64 function."""
    return profile.device == "cpu" and profile.arch == "aarch64"


class Ingestor:
    """Turn S3 ``ObjectCreated`` records into versions and compile messages (idempotently).

    ``arm64_queue``: the arm64 compile function's queue, for the profiles
    :func:`builds_on_arm64` picks; ``None`` sends every profile to ``queue``."""

    def __init__(self, store: ObjectStore, jobs: JobStore, queue: Queue, notifier: Notifier,
                 config: IngestConfig, registry: ProfileRegistry | None = None,
                 arm64_queue: Queue | None = None) -> None:
        self.store, self.jobs, self.queue, self.notifier = store, jobs, queue, notifier
        self.config = config
        self.registry = registry or load_profiles()
        self.arm64_queue = arm64_queue

    def route(self, profile: str) -> Queue:
        """The queue that compiles ``profile`` (a known profile name)."""
        if self.arm64_queue is not None and builds_on_arm64(self.registry.get(profile)):
            return self.arm64_queue
        return self.queue

    def handle(self, event: ObjectCreated) -> IngestOutcome:
        bucket, key = event.bucket, event.key
        if bucket != self.config.models_bucket:
            logger.warning("ignoring an event for bucket %r (expected %r)", bucket,
                           self.config.models_bucket)
            return IngestOutcome(status="ignored", key=ascii(key), reason="another bucket")
        try:
            check_key(key)
        except UnsafeKeyError as e:
            return self._reject_unsafe(event, e)
        if not key.startswith(MODELS_PREFIX) or not key.endswith(MODEL_SUFFIX):
            return IngestOutcome(status="ignored", key=key,
                                 reason=f"not a {MODELS_PREFIX}*{MODEL_SUFFIX} key")
        try:
            info = self._locate(event)
        except ObjectNotFoundError:
            logger.info("s3://%s/%s is gone; nothing to ingest", bucket, ascii(key))
            return IngestOutcome(status="ignored", key=key, reason="the object no longer exists")
        upload_id = _upload_id(info)
        source = SourceRef(bucket=bucket, key=key, version_id=info.version_id, etag=info.etag,
                           size=info.size, last_modified=info.last_modified)
        claim = self.jobs.claim_upload(upload_id, source)
        if claim.existing_state is not None:
            logger.info("duplicate delivery of upload %s (%s)", upload_id, claim.existing_state)
            return IngestOutcome(status="duplicate", key=key, upload_id=upload_id,
                                 model_name=claim.model_name, version=claim.version,
                                 reason=f"already {claim.existing_state}")
        try:
            return self._ingest(info, source, upload_id, claim)
        except TransientError:
            self.jobs.release_upload(upload_id)
            raise

    def _locate(self, event: ObjectCreated) -> ObjectInfo:
        """The exact object version the event is about. Real S3 names the version; moto's events
        do not, so look the ETag up among the versions; else take the current object (an
        unversioned bucket, or a sample event whose ETag is stale)."""
        if event.version_id:
            return self.store.head(event.bucket, event.key, event.version_id)
        if event.etag:
            vid = self.store.find_version(event.bucket, event.key, event.etag)
            if vid:
                return self.store.head(event.bucket, event.key, vid)
        return self.store.head(event.bucket, event.key)

    def _read_spec(self, key: str) -> UploadSpec:
        try:
            found = self.store.get_json(self.config.models_bucket, spec_key(key))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SpecError(f"{spec_key(key)} is not valid JSON: {e}") from e
        if found is None:
            return UploadSpec()
        try:
            return UploadSpec.model_validate(found[0])
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(top)'}: {err['msg']}"
                                 for err in e.errors())
            raise SpecError(f"{spec_key(key)} is not a valid compile spec: {problems}") from e

    def _ingest(self, info: ObjectInfo, source: SourceRef, upload_id: str,
                claim: UploadClaim) -> IngestOutcome:
        key, name = info.key, derive_model_name(info.key)
        try:
            spec = self._read_spec(key)
            name = spec.name or name
            profiles = list(dict.fromkeys(spec.profiles or self.config.default_profiles))
            for profile in profiles:
                self.registry.get(profile)
            try:
                CompileSpec(model_name=name, profiles=profiles, input_shapes=spec.input_shapes,
                            options=spec.options)
            except ValidationError as e:
                raise SpecError(f"invalid compile spec: {e.errors()[0]['msg']}") from e
            if info.size > self.config.max_model_bytes:
                raise ModelTooLargeError(
                    f"the model is {info.size:,} bytes, over the limit of "
                    f"{self.config.max_model_bytes:,} bytes")
            data = self.store.get(info.bucket, key, info.version_id)
            validated = validate_model(data, spec.input_shapes,
                                       max_bytes=self.config.max_model_bytes)
        except PermanentError as e:
            return self._reject(source, upload_id, e, name)

        source = source.model_copy(update={"sha256": validated.sha256})
        version = self.jobs.assign_version(
            name, upload_id, {"source": source.model_dump(), "profiles": profiles,
                              "spec": spec.model_dump(mode="json")},
            takeover=claim.takeover)
        messages = [
            CompileMessage(upload_id=upload_id, model_name=name, version=version, profile=p,
                           source=source, input_shapes=spec.input_shapes, options=spec.options,
                           report_key=report_key(key))
            for p in profiles
        ]
        self.jobs.create_jobs(name, version, profiles, upload_id)
        arm64 = [m.profile for m in messages if self.route(m.profile) is not self.queue]
        self.queue.send_many([m.to_json() for m in messages if m.profile not in arm64])
        if self.arm64_queue is not None and arm64:
            self.arm64_queue.send_many([m.to_json() for m in messages if m.profile in arm64])
        report = UploadReport(status="accepted", upload_id=upload_id, model=name, version=version,
                              source=source, profiles={p: ProfileStatus(status="queued")
                                                       for p in profiles})
        self._write_report(report_key(key), report)
        self.jobs.finish_upload(upload_id, "assigned", model=name, version=version,
                                profiles=profiles)
        logger.info("accepted %s as %s v%d for %s%s", ascii(key), name, version, profiles,
                    f" (arm64 builder: {arm64})" if arm64 else "")
        return IngestOutcome(status="accepted", key=key, upload_id=upload_id, model_name=name,
                             version=version, profiles=profiles, report_key=report_key(key),
                             arm64_profiles=arm64 if self.arm64_queue is not None else None)

    def _write_report(self, key: str, report: UploadReport) -> None:
        def mutate(current: dict[str, Any] | None) -> dict[str, Any] | None:
            rule = _merge_rule(report, current)
            if rule == "skip":
                return None
            if rule == "merge" and current is not None:
                merged = UploadReport.model_validate(current)
                profiles = dict(report.profiles)
                for name, status in merged.profiles.items():
                    if status.status != "queued":  # a compile finished before this write
                        profiles[name] = status
                return report.model_copy(update={"profiles": profiles}).dump()
            return report.dump()

        self.store.update_json(self.config.models_bucket, key, mutate)

    def _reject(self, source: SourceRef, upload_id: str, error: PermanentError,
                model_name: str | None) -> IngestOutcome:
        key = source.key
        report = UploadReport(status="rejected", upload_id=upload_id, model=model_name,
                              source=source, error=_error(error))
        self._write_report(report_key(key), report)
        self._notify_rejected(key, report_key(key), error, upload_id)
        self.jobs.finish_upload(upload_id, "rejected", error_code=error.code,
                                error=str(error)[:2000])
        logger.info("rejected %s: %s", ascii(key), error)
        return IngestOutcome(status="rejected", key=key, upload_id=upload_id,
                             model_name=model_name, report_key=report_key(key),
                             error_code=error.code, reason=str(error))

    def _reject_unsafe(self, event: ObjectCreated, error: UnsafeKeyError) -> IngestOutcome:
        """No claim, no read: the report goes to a fixed, hashed location."""
        rkey = rejected_report_key(event.key)
        report = UploadReport(status="rejected", key=ascii(event.key), error=_error(error))
        self.store.put_json(self.config.models_bucket, rkey, report.dump())
        self._notify_rejected(ascii(event.key), rkey, error, None)
        logger.warning("refused unsafe key %s", ascii(event.key)[:300])
        return IngestOutcome(status="rejected", key=ascii(event.key), report_key=rkey,
                             error_code=error.code, reason=str(error))

    def _notify_rejected(self, key: str, rkey: str, error: PermanentError,
                         upload_id: str | None) -> None:
        self.notifier.publish(
            f"edgeforge: upload rejected ({error.code})",
            {"event": "upload.rejected", "bucket": self.config.models_bucket, "key": key,
             "upload_id": upload_id, "error": _error(error).model_dump(exclude_none=True),
             "report": _s3_uri(self.config.models_bucket, rkey)},
            {"event": "upload.rejected", "status": "rejected", "error_code": error.code})


def _upload_id(info: ObjectInfo) -> str:
    revision = info.version_id or f"etag:{info.etag}"
    raw = "\n".join((info.bucket, info.key, revision)).encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()[:40]


# --------------------------------------------------------------------------------------------
# Compile
# --------------------------------------------------------------------------------------------


class CompileConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    models_bucket: str
    artifacts_bucket: str
    #: Wall-time bound of one profile's build (also bounded by the invocation's remaining time).
    timeout_s: float = Field(default=840.0, gt=0)
    #: Time kept back from the invocation's remaining time for upload and bookkeeping.
    margin_s: float = Field(default=45.0, ge=0)
    max_model_bytes: int = Field(default=DEFAULT_MAX_MODEL_BYTES, gt=0)
    #: With an AWS Batch queue: models at least this large are built there, not in Lambda.
    offload_min_bytes: int = Field(default=256 << 20, gt=0)


#: Lambda build failures that a bigger machine can fix: retried on AWS Batch when configured.
_OFFLOADABLE = {"compile_timeout", "compile_resources"}


class JobOutcome(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["published", "failed", "duplicate", "offloaded"]
    model_name: str
    version: int
    profile: str
    artifact_key: str | None = None
    report_key: str | None = None
    verified: bool | None = None
    error_code: str | None = None
    error: str | None = None


class CompileRunner:
    """Run one :class:`CompileMessage`: compile, sign, publish, record, report, notify.

    Permanent failures are reported and return normally (the message is done); transient ones
    raise :class:`~compiler.exceptions.TransientError` so the queue delivers the message again.
    With ``offload`` (an AWS Batch queue running the same image), builds that ask for tuning,
    large models, and Lambda builds that ran out of time or memory are handed to Batch."""

    def __init__(self, store: ObjectStore, jobs: JobStore, notifier: Notifier, signer: Signer,
                 worker: CompileWorker, config: CompileConfig,
                 registry: ProfileRegistry | None = None,
                 offload: BatchJobs | None = None) -> None:
        self.store, self.jobs, self.notifier = store, jobs, notifier
        self.signer, self.worker, self.config = signer, worker, config
        self.registry = registry or load_profiles()
        self.offload = offload

    def run(self, message: CompileMessage, remaining_s: float | None = None) -> JobOutcome:
        m = message
        akey = artifact_key(m.model_name, m.version, m.profile)
        job = self.jobs.get_job(m.model_name, m.version, m.profile)
        if job is not None and job.get("status") == "ok":
            return JobOutcome(status="duplicate", model_name=m.model_name, version=m.version,
                              profile=m.profile, artifact_key=akey)
        published = self._published(akey)
        if published is not None:  # an earlier attempt uploaded it, then died
            self.jobs.update_job(m.model_name, m.version, m.profile, status="ok", artifact=akey,
                                 sha256=published.metadata.get("sha256"))
            return JobOutcome(status="duplicate", model_name=m.model_name, version=m.version,
                              profile=m.profile, artifact_key=akey)

        if self.offload is not None:
            if m.options.tune_trials > 0:
                return self._offload(m, f"tuning ({m.options.tune_trials} trials) runs on AWS Batch")
            if m.source.size >= self.config.offload_min_bytes:
                return self._offload(m, f"models of {m.source.size:,} bytes are built on AWS Batch")
        budget = self.config.timeout_s
        if remaining_s is not None:
            budget = min(budget, remaining_s - self.config.margin_s)
            if budget < 10:
                raise TransientError(f"only {remaining_s:.0f} s left in this invocation; "
                                     "leaving the message for the next one")
        self.worker.timeout_s = budget
        self.jobs.update_job(m.model_name, m.version, m.profile, status="running", attempt=True,
                             upload_id=m.upload_id)
        with tempfile.TemporaryDirectory(prefix="edgeforge-job-") as tmp:
            try:
                data = self._source(m)
                report = compile_model(data, m.spec(), self.signer, Path(tmp),
                                       registry=self.registry, worker=self.worker,
                                       max_model_bytes=self.config.max_model_bytes)
                [result] = report.results
            except PermanentError as e:
                result = ProfileResult(profile=m.profile, status="failed", error_code=e.code,
                                       error=str(e))
            if result.status == "failed" and is_transient(result.error_code):
                self.jobs.update_job(m.model_name, m.version, m.profile, status="queued",
                                     error_code=result.error_code, error=result.error)
                raise TransientError(f"{m.model_name} v{m.version} {m.profile}: {result.error}")
            if result.status == "ok":
                return self._publish(m, result)
        if self.offload is not None and result.error_code in _OFFLOADABLE:
            return self._offload(m, f"the Lambda build failed: {result.error}")
        return self._fail(m, result)

    def _offload(self, m: CompileMessage, reason: str) -> JobOutcome:
        assert self.offload is not None
        job_id = self.offload.submit(f"{m.model_name}-{m.version}-{m.profile}",
                                     {"EDGEFORGE_MESSAGE": m.to_json()})
        self.jobs.update_job(m.model_name, m.version, m.profile, status="offloaded",
                             batch_job=job_id, offload_reason=reason[:500])
        self._update_upload_report(m, ProfileStatus(status="offloaded", batch_job=job_id))
        logger.info("%s v%d %s offloaded to AWS Batch job %s: %s", m.model_name, m.version,
                    m.profile, job_id, reason)
        return JobOutcome(status="offloaded", model_name=m.model_name, version=m.version,
                          profile=m.profile, error=reason)

    def _published(self, akey: str) -> ObjectInfo | None:
        try:
            return self.store.head(self.config.artifacts_bucket, akey)
        except ObjectNotFoundError:
            return None

    def _source(self, m: CompileMessage) -> bytes:
        try:
            data = self.store.get(m.source.bucket, m.source.key, m.source.version_id)
        except ObjectNotFoundError as e:
            raise SourceChangedError(
                f"the uploaded model {_s3_uri(m.source.bucket, m.source.key)} (version "
                f"{m.source.version_id or m.source.etag}) no longer exists; upload it again"
            ) from e
        if m.source.sha256 and hashlib.sha256(data).hexdigest() != m.source.sha256:
            raise SourceChangedError(
                f"{_s3_uri(m.source.bucket, m.source.key)} changed since it was validated "
                "(enable bucket versioning so every upload keeps its bytes)")
        return data

    def _publish(self, m: CompileMessage, result: ProfileResult) -> JobOutcome:
        assert result.artifact is not None
        akey = artifact_key(m.model_name, m.version, m.profile)
        rkey = artifact_report_key(m.model_name, m.version, m.profile)
        bucket = self.config.artifacts_bucket
        meta = {"sha256": result.sha256 or "", "model": m.model_name, "version": str(m.version),
                "profile": m.profile, "keyid": self.signer.keyid}
        try:
            with open(result.artifact, "rb") as f:
                self.store.put(bucket, akey, f, if_none_match=True, metadata=meta)
        except ConditionalWriteError:
            # A concurrent copy of this message published first: artifacts are immutable, so
            # keep that one and describe it.
            existing = self.store.head(bucket, akey)
            result = result.model_copy(update={"sha256": existing.metadata.get("sha256"),
                                               "size": existing.size})
        self._publish_index(m, result)
        status = ProfileStatus(status="ok", artifact=_s3_uri(bucket, akey), sha256=result.sha256,
                               size=result.size, verified=result.verified,
                               verification=result.verification, report=_s3_uri(bucket, rkey))
        self.store.put_json(bucket, rkey, self._job_report(m, status, result))
        self.jobs.update_job(m.model_name, m.version, m.profile, status="ok", artifact=akey,
                             sha256=result.sha256, verified=result.verified, error_code=None)
        self._update_upload_report(m, status)
        self.notifier.publish(
            f"edgeforge: {m.model_name} v{m.version} {m.profile} published",
            {"event": "compile.succeeded", "model": m.model_name, "version": m.version,
             "profile": m.profile, "artifact": status.artifact, "sha256": result.sha256,
             "verified": result.verified, "report": status.report,
             "model_report": _s3_uri(self.config.models_bucket, m.report_key)},
            {"event": "compile.succeeded", "status": "ok", "model": m.model_name,
             "profile": m.profile})
        return JobOutcome(status="published", model_name=m.model_name, version=m.version,
                          profile=m.profile, artifact_key=akey, report_key=rkey,
                          verified=result.verified)

    def _publish_index(self, m: CompileMessage, result: ProfileResult) -> None:
        """Point the signed repository index for (model, profile) at this artifact, unless a
        newer version is already current. Conditional writes: racing publishers never lose an
        update and the index version never goes back."""
        assert result.sha256 is not None and result.size is not None
        akey = artifact_key(m.model_name, m.version, m.profile)

        def mutate(current: Any | None) -> Any | None:
            envelope = json.dumps(current).encode() if current is not None else None
            index = next_index(envelope, model=m.model_name, profile=m.profile,
                               model_version=str(m.version),
                               artifact_path=akey.removeprefix(ARTIFACTS_PREFIX),
                               size=int(result.size or 0), sha256=str(result.sha256))
            return None if index is None else json.loads(signed_index(index, self.signer))

        self.store.update_json(self.config.artifacts_bucket, index_key(m.model_name, m.profile),
                               mutate)

    def _fail(self, m: CompileMessage, result: ProfileResult) -> JobOutcome:
        rkey = artifact_report_key(m.model_name, m.version, m.profile)
        bucket = self.config.artifacts_bucket
        error = _error(code=result.error_code or "compile_failed", message=result.error or "")
        status = ProfileStatus(status="failed", error=error, report=_s3_uri(bucket, rkey))
        self.store.put_json(bucket, rkey, self._job_report(m, status, result))
        self.jobs.update_job(m.model_name, m.version, m.profile, status="failed",
                             error_code=error.code, error=error.message[:2000])
        self._update_upload_report(m, status)
        self.notifier.publish(
            f"edgeforge: {m.model_name} v{m.version} {m.profile} failed ({error.code})",
            {"event": "compile.failed", "model": m.model_name, "version": m.version,
             "profile": m.profile, "error": error.model_dump(exclude_none=True),
             "report": status.report,
             "model_report": _s3_uri(self.config.models_bucket, m.report_key)},
            {"event": "compile.failed", "status": "failed", "model": m.model_name,
             "profile": m.profile, "error_code": error.code})
        logger.info("%s v%d %s failed: %s", m.model_name, m.version, m.profile, error.message)
        return JobOutcome(status="failed", model_name=m.model_name, version=m.version,
                          profile=m.profile, report_key=rkey, error_code=error.code,
                          error=error.message)

    def _job_report(self, m: CompileMessage, status: ProfileStatus,
                    result: ProfileResult) -> dict[str, Any]:
        return {"schema": 1, "model": m.model_name, "version": m.version, "profile": m.profile,
                "upload_id": m.upload_id, "source": m.source.model_dump(mode="json"),
                "signed_by": self.signer.keyid if status.status == "ok" else None,
                # x86_64, or aarch64 on the arm64 compile function (ArmCompile=true)
                "build_machine": platform.machine(),
                "result": status.model_dump(mode="json", exclude_none=True),
                "timings": result.timings}

    def _update_upload_report(self, m: CompileMessage, status: ProfileStatus) -> None:
        mine = UploadReport(status="accepted", upload_id=m.upload_id, model=m.model_name,
                            version=m.version, source=m.source, profiles={m.profile: status})

        def mutate(current: dict[str, Any] | None) -> dict[str, Any] | None:
            rule = _merge_rule(mine, current)
            if rule == "skip":
                return None
            if rule == "merge" and current is not None:
                cur = UploadReport.model_validate(current)
                profiles = {**cur.profiles, m.profile: status}
                return cur.model_copy(update={"profiles": profiles,
                                              "updated_at": _now_iso()}).dump()
            return mine.dump()

        self.store.update_json(self.config.models_bucket, m.report_key, mutate)

"""Adapters over AWS storage and messaging: S3 objects, one DynamoDB table, an SQS queue, an SNS
topic, and the S3 event-notification format.

With :mod:`compiler.kms`, the only modules of the library that talk to boto3. Each adapter takes
a client created by the caller (at module scope in a Lambda function, so it is reused across
invocations) and translates botocore errors into the library's two branches:

::

    StorageError (TransientError)        throttling, 5xx, timeouts, missing permissions: retry later
    └── ConditionalWriteError            a conditional write lost a race: re-read and try again
    ObjectNotFoundError (PermanentError) the object (or version) does not exist

Nothing here knows about models, versions or Lambda; :mod:`compiler.jobs` builds on these.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from botocore.exceptions import BotoCoreError, ClientError

from .exceptions import PermanentError, TransientError

if TYPE_CHECKING:  # pragma: no cover
    from mypy_boto3_batch import BatchClient
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sqs import SQSClient

logger = logging.getLogger(__name__)

__all__ = [
    "BatchJobs",
    "ConditionalWriteError",
    "JsonTable",
    "Notifier",
    "ObjectCreated",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectStore",
    "Queue",
    "StorageError",
    "parse_s3_notifications",
]


class StorageError(TransientError):
    """An AWS call failed in a way that may pass (throttling, 5xx, timeouts, permissions)."""

    code = "storage_unavailable"


class ConditionalWriteError(StorageError):
    """A conditional write (DynamoDB condition, S3 If-Match / If-None-Match) was refused."""

    code = "write_conflict"


class ObjectNotFoundError(PermanentError):
    code = "object_missing"


_NOT_FOUND = {"NoSuchKey", "NoSuchVersion", "404", "NotFound"}
_CONFLICT = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409",
             "ConditionalCheckFailedException", "TransactionConflictException"}


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _translate(e: Exception, what: str) -> Exception:
    """Map a botocore exception onto the library's error tree (use as ``raise _translate(e)``)."""
    if isinstance(e, ClientError):
        code = _code(e)
        if code in _NOT_FOUND:
            return ObjectNotFoundError(f"{what}: not found ({code})")
        if code in _CONFLICT:
            return ConditionalWriteError(f"{what}: a concurrent writer got there first ({code})")
        msg = e.response.get("Error", {}).get("Message", "")
        return StorageError(f"{what} failed: {code} {msg}".strip())
    return StorageError(f"{what} failed: {type(e).__name__}: {e}")


# --------------------------------------------------------------------------------------------
# S3 event notifications
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectCreated:
    """One ``ObjectCreated`` record of an S3 event notification, key already URL-decoded."""

    bucket: str
    key: str
    etag: str | None = None
    version_id: str | None = None
    size: int | None = None
    event_name: str = "ObjectCreated:Put"


def _records(event: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """S3 records of a direct S3 event, of an SQS event whose bodies are S3 events (S3 → SQS),
    or of an SNS-wrapped one. ``s3:TestEvent`` messages have no ``Records`` and yield nothing."""
    for record in event.get("Records") or []:
        if not isinstance(record, Mapping):
            continue
        source = record.get("eventSource") or record.get("EventSource")
        if source == "aws:sqs":
            body = record.get("body")
        elif source == "aws:sns":
            body = (record.get("Sns") or {}).get("Message")
        else:
            yield record
            continue
        try:
            inner = json.loads(body) if isinstance(body, str) else None
        except json.JSONDecodeError:
            logger.warning("skipping a queued message that is not JSON")
            continue
        if isinstance(inner, Mapping):
            yield from _records(inner)


def parse_s3_notifications(event: Mapping[str, Any]) -> list[ObjectCreated]:
    """Parse leniently: moto's notifications miss fields (``versionId``, ``sequencer``) that
    real S3 sends, and keys arrive URL-encoded (``+`` for spaces, ``%2F`` for ``/``)."""
    out = []
    for record in _records(event):
        name = str(record.get("eventName", ""))
        s3 = record.get("s3")
        if not isinstance(s3, Mapping) or not name.startswith(("ObjectCreated", "s3:ObjectCreated")):
            logger.info("skipping S3 record %r without an ObjectCreated payload", name[:100])
            continue
        bucket = (s3.get("bucket") or {}).get("name")
        obj = s3.get("object") or {}
        raw_key = obj.get("key")
        if not isinstance(bucket, str) or not isinstance(raw_key, str):
            logger.warning("skipping an S3 record without bucket name or object key")
            continue
        etag = obj.get("eTag") or obj.get("etag")
        size = obj.get("size")
        out.append(ObjectCreated(
            bucket=bucket,
            key=unquote_plus(raw_key),
            etag=str(etag).strip('"') if etag else None,
            version_id=obj.get("versionId") or None,
            size=int(size) if isinstance(size, int | str) and str(size).isdigit() else None,
            event_name=name,
        ))
    return out


# --------------------------------------------------------------------------------------------
# S3
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectInfo:
    bucket: str
    key: str
    etag: str
    size: int
    version_id: str | None = None
    last_modified: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def _info(bucket: str, key: str, head: Mapping[str, Any]) -> ObjectInfo:
    vid = head.get("VersionId")
    modified = head.get("LastModified")
    return ObjectInfo(
        bucket=bucket, key=key, etag=str(head.get("ETag", "")).strip('"'),
        size=int(head.get("ContentLength", 0)),
        version_id=vid if vid and vid != "null" else None,
        last_modified=modified.isoformat() if hasattr(modified, "isoformat") else None,
        metadata=dict(head.get("Metadata") or {}),
    )


class ObjectStore:
    """S3 objects: reads of exact versions, conditional writes, optimistic JSON updates."""

    def __init__(self, client: S3Client) -> None:
        self._s3 = client

    def head(self, bucket: str, key: str, version_id: str | None = None) -> ObjectInfo:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        try:
            return _info(bucket, key, self._s3.head_object(**kwargs))
        except (ClientError, BotoCoreError) as e:
            raise _translate(e, f"s3://{bucket}/{key}") from e

    def find_version(self, bucket: str, key: str, etag: str) -> str | None:
        """The newest version of ``key`` whose ETag is ``etag`` (None: unversioned bucket, or
        no such version any more)."""
        try:
            pages = self._s3.get_paginator("list_object_versions").paginate(
                Bucket=bucket, Prefix=key)
            for page in pages:
                for v in page.get("Versions", []):
                    vid = v.get("VersionId")
                    if (v.get("Key") == key and str(v.get("ETag", "")).strip('"') == etag
                            and vid and vid != "null"):
                        return str(vid)  # listed newest first
        except (ClientError, BotoCoreError) as e:
            raise _translate(e, f"listing versions of s3://{bucket}/{key}") from e
        return None

    def get(self, bucket: str, key: str, version_id: str | None = None) -> bytes:
        """The whole object (callers check the size with :meth:`head` first)."""
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        try:
            return self._s3.get_object(**kwargs)["Body"].read()
        except (ClientError, BotoCoreError) as e:
            raise _translate(e, f"s3://{bucket}/{key}") from e

    def get_json(self, bucket: str, key: str) -> tuple[Any, str] | None:
        """(parsed JSON, ETag), or None when the object does not exist."""
        try:
            resp = self._s3.get_object(Bucket=bucket, Key=key)
            body = resp["Body"].read()
        except (ClientError, BotoCoreError) as e:
            err = _translate(e, f"s3://{bucket}/{key}")
            if isinstance(err, ObjectNotFoundError):
                return None
            raise err from e
        return json.loads(body), str(resp.get("ETag", "")).strip('"')

    def put(self, bucket: str, key: str, body: bytes | IO[bytes], *,
            content_type: str = "application/octet-stream", if_none_match: bool = False,
            if_match: str | None = None, metadata: Mapping[str, str] | None = None) -> str:
        """Write an object; ``if_none_match`` creates only, ``if_match`` replaces only that
        ETag. A refused condition raises :class:`ConditionalWriteError`. Returns the ETag."""
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": body,
                                  "ContentType": content_type}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if if_match:
            kwargs["IfMatch"] = f'"{if_match}"'
        if metadata:
            kwargs["Metadata"] = dict(metadata)
        try:
            return str(self._s3.put_object(**kwargs).get("ETag", "")).strip('"')
        except (ClientError, BotoCoreError) as e:
            raise _translate(e, f"writing s3://{bucket}/{key}") from e

    def put_json(self, bucket: str, key: str, document: Any, **kwargs: Any) -> str:
        body = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False).encode()
        return self.put(bucket, key, body, content_type="application/json", **kwargs)

    def update_json(self, bucket: str, key: str, mutate: Callable[[Any | None], Any | None],
                    attempts: int = 10) -> Any | None:
        """Read-modify-write a JSON object without lost updates (If-Match / If-None-Match).
        ``mutate`` gets the current document (None if absent) and returns the new one, or None
        to leave it as it is. Returns what was written (or None)."""
        for attempt in range(attempts):
            try:
                current = self.get_json(bucket, key)
            except ValueError:  # not JSON (someone wrote over it): replace it, still conditionally
                current = (None, self.head(bucket, key).etag)
            doc, etag = current if current is not None else (None, None)
            new = mutate(json.loads(json.dumps(doc)) if doc is not None else None)
            if new is None:
                return None
            try:
                if etag is None:
                    self.put_json(bucket, key, new, if_none_match=True)
                else:
                    self.put_json(bucket, key, new, if_match=etag)
                return new
            except ConditionalWriteError:
                time.sleep(random.uniform(0, 0.05 * (attempt + 1)))
        raise ConditionalWriteError(f"s3://{bucket}/{key}: still contended after {attempts} tries")


# --------------------------------------------------------------------------------------------
# DynamoDB
# --------------------------------------------------------------------------------------------


def _to_dynamo(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, Mapping):
        return {k: _to_dynamo(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_to_dynamo(v) for v in value]
    return value


def _from_dynamo(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, Mapping):
        return {k: _from_dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_dynamo(v) for v in value]
    return value


class JsonTable:
    """A DynamoDB table with a string partition key ``pk`` and sort key ``sk``, read and written
    as plain dicts. Reads are strongly consistent; writes take condition expressions."""

    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

        self._ddb = client
        self.name = table_name
        self._ser = TypeSerializer()
        self._de = TypeDeserializer()

    def _dump(self, item: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self._ser.serialize(_to_dynamo(v)) for k, v in item.items() if v is not None}

    def _load(self, item: Mapping[str, Any]) -> dict[str, Any]:
        return {k: _from_dynamo(self._de.deserialize(v)) for k, v in item.items()}

    @staticmethod
    def _key(pk: str, sk: str) -> dict[str, Any]:
        return {"pk": {"S": pk}, "sk": {"S": sk}}

    def get(self, pk: str, sk: str) -> dict[str, Any] | None:
        try:
            resp = self._ddb.get_item(TableName=self.name, Key=self._key(pk, sk),
                                      ConsistentRead=True)
        except (ClientError, BotoCoreError) as e:
            raise _translate(e, f"reading {pk}/{sk} from {self.name}") from e
        item = resp.get("Item")
        return self._load(item) if item else None

    def put(self, item: Mapping[str, Any], *, condition: str | None = None,
            names: Mapping[str, str] | None = None, values: Mapping[str, Any] | None = None
            ) -> None:
        kwargs: dict[str, Any] = {"TableName": self.name, "Item": self._dump(item)}
        self._conditions(kwargs, condition, names, values)
        try:
            self._ddb.put_item(**kwargs)
        except (ClientError, BotoCoreError) as e:
            raise _translate(e, f"writing {item.get('pk')}/{item.get('sk')} to {self.name}") from e

    def put_new(self, item: Mapping[str, Any]) -> bool:
        """Create the item if its key is free; False when it exists already."""
        try:
            self.put(item, condition="attribute_not_exists(pk)")
        except ConditionalWriteError:
            return False
        return True

    def update(self, pk: str, sk: str, values: Mapping[str, Any], *,
               condition: str | None = None, names: Mapping[str, str] | None = None,
               condition_values: Mapping[str, Any] | None = None,
               increment: Mapping[str, int] | None = None) -> dict[str, Any]:
        """SET each of ``values`` (and ADD each of ``increment``), under ``condition``;
        returns the whole new item. Attribute names are always aliased (#a0, #a1…)."""
        all_names = dict(names or {})
        all_values: dict[str, Any] = dict(condition_values or {})
        sets, adds = [], []
        for i, (attr, value) in enumerate(values.items()):
            all_names[f"#s{i}"] = attr
            all_values[f":s{i}"] = value
            sets.append(f"#s{i} = :s{i}")
        for i, (attr, by) in enumerate((increment or {}).items()):
            all_names[f"#n{i}"] = attr
            all_values[f":n{i}"] = by
            adds.append(f"#n{i} :n{i}")
        expression = " ".join(p for p in (
            "SET " + ", ".join(sets) if sets else "", "ADD " + ", ".join(adds) if adds else ""
        ) if p)
        kwargs: dict[str, Any] = {"TableName": self.name, "Key": self._key(pk, sk),
                                  "UpdateExpression": expression, "ReturnValues": "ALL_NEW"}
        self._conditions(kwargs, condition, all_names, all_values)
        try:
            resp = self._ddb.update_item(**kwargs)
        except (ClientError, BotoCoreError) as e:
            raise _translate(e, f"updating {pk}/{sk} in {self.name}") from e
        return self._load(resp.get("Attributes") or {})

    def query(self, pk: str, sk_prefix: str = "") -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "TableName": self.name, "ConsistentRead": True,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
            "ExpressionAttributeValues": {":pk": {"S": pk}, ":prefix": {"S": sk_prefix}},
        }
        items: list[dict[str, Any]] = []
        try:
            while True:
                resp = self._ddb.query(**kwargs)
                items += [self._load(i) for i in resp.get("Items", [])]
                if "LastEvaluatedKey" not in resp:
                    return items
                kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
        except (ClientError, BotoCoreError) as e:
            raise _translate(e, f"querying {pk} in {self.name}") from e

    def _conditions(self, kwargs: dict[str, Any], condition: str | None,
                    names: Mapping[str, str] | None, values: Mapping[str, Any] | None) -> None:
        if condition:
            kwargs["ConditionExpression"] = condition
        if names:
            kwargs["ExpressionAttributeNames"] = dict(names)
        if values:
            kwargs["ExpressionAttributeValues"] = {k: self._ser.serialize(_to_dynamo(v))
                                                   for k, v in values.items()}


# --------------------------------------------------------------------------------------------
# SQS and SNS
# --------------------------------------------------------------------------------------------


class Queue:
    """Send messages to one SQS queue, in batches of ten; failed entries are retried once."""

    def __init__(self, client: SQSClient, queue_url: str) -> None:
        self._sqs = client
        self.url = queue_url

    def send_many(self, bodies: list[str]) -> None:
        for start in range(0, len(bodies), 10):
            entries = [{"Id": str(i), "MessageBody": b}
                       for i, b in enumerate(bodies[start:start + 10])]
            for attempt in range(2):
                try:
                    resp = self._sqs.send_message_batch(QueueUrl=self.url, Entries=entries)
                except (ClientError, BotoCoreError) as e:
                    raise _translate(e, f"sending to {self.url}") from e
                failed = {f["Id"] for f in resp.get("Failed", [])}
                entries = [e for e in entries if e["Id"] in failed]
                if not entries:
                    break
                if attempt:
                    raise StorageError(f"SQS refused {len(entries)} message(s) to {self.url}: "
                                       f"{resp.get('Failed')}")


class Notifier:
    """Publish JSON notifications to one SNS topic (subscribers filter on the attributes)."""

    def __init__(self, client: SNSClient, topic_arn: str) -> None:
        self._sns = client
        self.topic_arn = topic_arn

    def publish(self, subject: str, message: Mapping[str, Any],
                attributes: Mapping[str, str] | None = None) -> str:
        # SNS subjects: printable ASCII, at most 100 characters.
        clean = "".join(c if 32 <= ord(c) < 127 else "?" for c in subject)[:100] or "edgeforge"
        attrs = {k: {"DataType": "String", "StringValue": v}
                 for k, v in (attributes or {}).items() if v}
        try:
            resp = self._sns.publish(TopicArn=self.topic_arn, Subject=clean,
                                     Message=json.dumps(message, sort_keys=True, default=str),
                                     MessageAttributes=attrs)
        except (ClientError, BotoCoreError) as e:
            raise _translate(e, f"publishing to {self.topic_arn}") from e
        return str(resp.get("MessageId", ""))


class BatchJobs:
    """Submit container jobs to one AWS Batch queue (the compile image, for large builds)."""

    def __init__(self, client: BatchClient, job_queue: str, job_definition: str) -> None:
        self._batch = client
        self.job_queue = job_queue
        self.job_definition = job_definition

    def submit(self, name: str, environment: Mapping[str, str]) -> str:
        """Submit a job with extra environment variables; returns the job id. ``name`` is
        folded to Batch's alphabet (letters, digits, ``-`` and ``_``, at most 128)."""
        clean = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in name)
        try:
            resp = self._batch.submit_job(
                jobName=clean[:128] or "edgeforge-compile", jobQueue=self.job_queue,
                jobDefinition=self.job_definition,
                containerOverrides={"environment": [{"name": k, "value": v}
                                                    for k, v in environment.items()]})
        except (ClientError, BotoCoreError) as e:
            raise _translate(e, f"submitting a job to {self.job_queue}") from e
        return str(resp["jobId"])

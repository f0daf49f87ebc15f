"""Ingest function: S3 ``ObjectCreated`` on ``models/*.onnx`` → validate (no TVM) → assign a
version once per distinct upload → one compile message per profile.

Triggered by S3 directly (template.yaml) or by an SQS queue that S3 notifies (the local stack);
both event shapes are accepted. Permanent problems are reported next to the model and notified,
and the invocation succeeds; a transient problem raises so that the invocation is retried.

With ``EDGEFORGE_ARM_COMPILE_QUEUE_URL`` set (template.yaml ``ArmCompile=true``), the AArch64 CPU
profiles go to the arm64 compile function's queue (``compiler.jobs.builds_on_arm64``).
"""

from __future__ import annotations

from typing import Annotated, Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from compiler.exceptions import TransientError
from compiler.jobs import IngestConfig, Ingestor, JobStore
from compiler.storage import JsonTable, Notifier, ObjectStore, Queue, parse_s3_notifications


class IngestSettings(BaseSettings):
    """The function's environment (``EDGEFORGE_*``), set by template.yaml."""

    model_config = SettingsConfigDict(env_prefix="EDGEFORGE_", extra="ignore")

    models_bucket: str
    compile_queue_url: str
    #: The arm64 (Graviton) compile function's queue, for AArch64 CPU profiles ("" = none: every
    #: profile goes to the compile queue). Set by template.yaml when ArmCompile=true.
    arm_compile_queue_url: str = ""
    jobs_table: str
    topic_arn: str
    #: Profiles compiled when the upload has no spec sidecar (comma-separated in the env).
    default_profiles: Annotated[list[str], NoDecode] = Field(default=["x86_64"], min_length=1)
    max_model_mb: int = Field(default=512, gt=0)
    #: How long a claim on an upload shields it from duplicate deliveries (≥ the timeout).
    lease_s: float = Field(default=900, gt=0)

    @field_validator("default_profiles", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v


logger = Logger(service="edgeforge-ingest")
tracer = Tracer(service="edgeforge-ingest")
metrics = Metrics(namespace="edgeforge", service="edgeforge-ingest")

settings = IngestSettings()  # type: ignore[call-arg]
_sqs = boto3.client("sqs")
ingestor = Ingestor(
    store=ObjectStore(boto3.client("s3")),
    jobs=JobStore(JsonTable(boto3.client("dynamodb"), settings.jobs_table),
                  lease_s=settings.lease_s),
    queue=Queue(_sqs, settings.compile_queue_url),
    arm64_queue=(Queue(_sqs, settings.arm_compile_queue_url)
                 if settings.arm_compile_queue_url else None),
    notifier=Notifier(boto3.client("sns"), settings.topic_arn),
    config=IngestConfig(models_bucket=settings.models_bucket,
                        default_profiles=settings.default_profiles,
                        max_model_bytes=settings.max_model_mb << 20),
)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    outcomes: list[dict[str, Any]] = []
    retry: TransientError | None = None
    for record in parse_s3_notifications(event):
        try:
            outcome = ingestor.handle(record)
        except TransientError as e:  # finish the other records, then ask for a retry
            logger.warning("transient failure; the event will be retried", extra={
                "key": ascii(record.key), "error": str(e), "error_code": e.code})
            metrics.add_metric(name="IngestRetries", unit=MetricUnit.Count, value=1)
            retry = retry or e
            continue
        metrics.add_metric(name=f"Uploads{outcome.status.capitalize()}", unit=MetricUnit.Count,
                           value=1)
        logger.info("upload %s", outcome.status, extra={"outcome": outcome.model_dump(
            exclude_none=True)})
        outcomes.append(outcome.model_dump(exclude_none=True))
    if retry is not None:
        raise retry
    return {"outcomes": outcomes}

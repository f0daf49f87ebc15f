"""Compile function (container image): one SQS message = one (model, version, profile).

Partial batch responses (``ReportBatchItemFailures``): a message whose job failed permanently is
reported and counts as processed; a transient failure marks only that message as failed, so SQS
delivers it again and, after ``maxReceiveCount``, moves it to the dead-letter queue.
"""

from __future__ import annotations

import os
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from compiler.jobs import CompileConfig, CompileMessage, CompileRunner, JobStore
from compiler.kms import KmsSigner
from compiler.storage import BatchJobs, JsonTable, Notifier, ObjectStore
from compiler.worker import CompileWorker


class CompileSettings(BaseSettings):
    """The function's environment (``EDGEFORGE_*``), set by template.yaml."""

    model_config = SettingsConfigDict(env_prefix="EDGEFORGE_", extra="ignore")

    models_bucket: str
    artifacts_bucket: str
    jobs_table: str
    topic_arn: str
    kms_key_id: str
    #: Upper bound of one build; the invocation's remaining time bounds it too.
    timeout_s: float = Field(default=840, gt=0)
    margin_s: float = Field(default=45, ge=0)
    #: Resident-memory bound of the TVM process; 0 = the function's memory less 512 MB.
    memory_limit_mb: int = Field(default=0, ge=0)
    max_model_mb: int = Field(default=512, gt=0)
    #: AWS Batch queue and job definition for builds beyond Lambda's limits ("" = none).
    batch_job_queue: str = ""
    batch_job_definition: str = ""
    #: With Batch: models at least this large are built there.
    batch_min_model_mb: int = Field(default=256, gt=0)

    def worker_memory_mb(self) -> int:
        if self.memory_limit_mb:
            return self.memory_limit_mb
        total = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "10240"))
        return max(total - 512, 512)


logger = Logger(service="edgeforge-compile")
tracer = Tracer(service="edgeforge-compile")
metrics = Metrics(namespace="edgeforge", service="edgeforge-compile")

settings = CompileSettings()  # type: ignore[call-arg]
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
#: One warm TVM process per execution environment: ``import tvm`` is paid on the first message.
worker = CompileWorker(timeout_s=settings.timeout_s, memory_limit_mb=settings.worker_memory_mb())
runner = CompileRunner(
    store=ObjectStore(boto3.client("s3")),
    jobs=JobStore(JsonTable(boto3.client("dynamodb"), settings.jobs_table)),
    notifier=Notifier(boto3.client("sns"), settings.topic_arn),
    signer=KmsSigner(boto3.client("kms"), settings.kms_key_id),
    worker=worker,
    config=CompileConfig(models_bucket=settings.models_bucket,
                         artifacts_bucket=settings.artifacts_bucket,
                         timeout_s=settings.timeout_s, margin_s=settings.margin_s,
                         max_model_bytes=settings.max_model_mb << 20,
                         offload_min_bytes=settings.batch_min_model_mb << 20),
    offload=(BatchJobs(boto3.client("batch"), settings.batch_job_queue,
                       settings.batch_job_definition)
             if settings.batch_job_queue and settings.batch_job_definition else None),
)


@tracer.capture_method
def record_handler(record: SQSRecord, lambda_context: LambdaContext | None = None
                   ) -> dict[str, Any]:
    try:
        message = CompileMessage.model_validate_json(record.body)
    except ValidationError as e:
        # Retrying cannot fix a malformed message: log it and let it go.
        logger.error("dropping a malformed compile message", extra={
            "message_id": record.message_id, "error": str(e)[:2000]})
        metrics.add_metric(name="InvalidMessages", unit=MetricUnit.Count, value=1)
        return {"status": "invalid"}
    logger.append_keys(model=message.model_name, version=message.version,
                       profile=message.profile)
    remaining = (lambda_context.get_remaining_time_in_millis() / 1000
                 if lambda_context is not None else None)
    outcome = runner.run(message, remaining_s=remaining)  # TransientError → retried by SQS
    metrics.add_metric(name={"published": "ArtifactsPublished", "failed": "CompileFailures",
                             "duplicate": "DuplicateMessages",
                             "offloaded": "CompilesOffloaded"}[outcome.status],
                       unit=MetricUnit.Count, value=1)
    logger.info("job %s", outcome.status, extra={"outcome": outcome.model_dump(exclude_none=True)})
    return outcome.model_dump(exclude_none=True)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return process_partial_response(event=event, record_handler=record_handler,
                                    processor=processor, context=context)

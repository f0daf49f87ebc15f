"""The compile image's AWS Batch entry point: run one compile message outside Lambda.

The compile function submits a Batch job with the message in ``EDGEFORGE_MESSAGE`` when a build
needs more than Lambda's 15 minutes / 10 GB (template.yaml, ``EnableBatch``). The job runs the
same image (``entrypoint.sh batch``) and the same :class:`~compiler.jobs.CompileRunner`, with
the Batch job's environment and no time limit of its own but ``EDGEFORGE_TIMEOUT_S``.

Exit status: 0 when the job is done (published, or failed with a report), 2 for an unusable
message, 75 (EX_TEMPFAIL) for a transient failure: the job definition retries on 75.
"""

from __future__ import annotations

import os
import sys

from pydantic import ValidationError

EX_TEMPFAIL = 75


def main() -> int:
    # Batch runs no Lambda runtime: no X-Ray daemon, and nothing to offload to.
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
    for var in ("EDGEFORGE_BATCH_JOB_QUEUE", "EDGEFORGE_BATCH_JOB_DEFINITION"):
        os.environ.pop(var, None)

    from compiler.exceptions import TransientError
    from compiler.jobs import CompileMessage
    from functions.compile.app import logger, runner

    try:
        message = CompileMessage.model_validate_json(os.environ.get("EDGEFORGE_MESSAGE", ""))
    except ValidationError as e:
        logger.error("EDGEFORGE_MESSAGE is not a compile message", extra={"error": str(e)[:2000]})
        return 2
    logger.append_keys(model=message.model_name, version=message.version,
                       profile=message.profile, runner="batch")
    try:
        outcome = runner.run(message)
    except TransientError as e:
        logger.warning("transient failure; Batch will retry the job",
                       extra={"error": str(e), "error_code": e.code})
        return EX_TEMPFAIL
    finally:
        runner.worker.close()
    logger.info("job %s", outcome.status, extra={"outcome": outcome.model_dump(exclude_none=True)})
    return 0


if __name__ == "__main__":
    sys.exit(main())

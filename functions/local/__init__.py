"""The local embedded stack: the whole cloud-to-edge flow on one machine, no AWS account, no
Docker. ``template.yaml`` is created on moto's standalone server on 127.0.0.1 and the same Lambda
handlers run as local workers polling SQS (see docs/LOCAL.md).

>>> from functions.local import LocalStack, StackOptions
>>> with LocalStack(StackOptions(port=0)) as stack:
...     stack.client("s3").put_object(Bucket=stack.info.outputs["ModelsBucketName"], ...)

The CLI front-ends (``edgeforge dev …``, ``edgeforge demo``) are :mod:`functions.local.cli` and
:mod:`functions.local.demo`.
"""

from __future__ import annotations

from .stack import (
    FunctionInfo,
    LocalStack,
    StackInfo,
    StackOptions,
    StackStartError,
    running_stack,
    stop_running_stack,
)
from .template import (
    LocalStackError,
    PhysicalResource,
    Resolver,
    Template,
    TemplateError,
    UnresolvedError,
    load_template,
)

__all__ = [
    "FunctionInfo",
    "LocalStack",
    "LocalStackError",
    "PhysicalResource",
    "Resolver",
    "StackInfo",
    "StackOptions",
    "StackStartError",
    "Template",
    "TemplateError",
    "UnresolvedError",
    "load_template",
    "running_stack",
    "stop_running_stack",
]
